r"""What a client asks of the server before its data: the config message and the JSON parameters
(:class:`StreamRequest`).

The MRD streaming convention (python-ismrmrd-server's ``server.py``): the first message names the reconstruction, as
a config file name (id 1, e.g. ``invertcontrast``; Siemens OpenRecon always sends ``openrecon``) or a config text
(id 2, e.g. a Gadgetron XML chain); after the XML header, a text message may carry the scanner UI's parameters as
JSON, ``{"parameters": {...}}``, whose ``config`` and non-empty ``customconfig`` override the config message.

:meth:`StreamRequest.names` gives the names asked for, in the order they win: ``parameters.customconfig``, then
``parameters.config``, then the config message (a config text that is XML names nothing). Which served model a
name selects is :mod:`compressor.export.scanner.model_selection`'s business.

Parameters this server reads (document them in the scanner UI's JSON):

* ``customconfig``, ``config``: the model (above);
* ``zerofilled`` (:data:`COMPARISON_PARAMETER`): ``true`` (or ``"true"``, ``"1"``, ``"yes"``, ``"on"``, ``1``) also
  returns each slice's zero-filled image as a comparison series (its own ``image_series_index``, see
  :class:`~compressor.export.scanner.ismrmrd_images.SeriesNumbering`).

A text that is not such JSON is not an error (FIRE and OpenRecon send other texts too): it is counted and ignored,
as python-ismrmrd-server ignores JSON it cannot parse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

COMPARISON_PARAMETER = "zerofilled"
TRUE_TEXTS = frozenset({"1", "true", "yes", "on"})


@dataclass(frozen=True)
class StreamRequest:
    """The config message and JSON parameters of one connection.

    Attributes:
        config: the config message's text (``None``: none was sent).
        config_is_text: whether it was a config text (id 2) rather than a file name (id 1).
        json_config: ``parameters.config``.
        custom_config: ``parameters.customconfig`` (an empty one is ``None``, as python-ismrmrd-server ignores it).
        zero_filled: whether the comparison series was asked for (``parameters.zerofilled``).
        json_text: the JSON parameters' text as received (``None``: none).
    """

    config: str | None = None
    config_is_text: bool = False
    json_config: str | None = None
    custom_config: str | None = None
    zero_filled: bool = False
    json_text: str | None = None

    def names(self) -> list[tuple[str, str]]:
        """``(name, where it came from)`` for each model name asked for, in the order they win (module
        docstring)."""
        asked = [(self.custom_config, "parameters.customconfig"), (self.json_config, "parameters.config")]
        if self.config is not None and not (self.config_is_text and self.config.lstrip().startswith("<")):
            asked.append((self.config, "the config message"))
        return [(name.strip(), where) for name, where in asked if name is not None and name.strip()]

    def with_parameters(self, text: str) -> StreamRequest | None:
        """This request with the JSON parameters of ``text``; ``None`` if ``text`` is not ``{"parameters":
        {...}}`` JSON."""
        parameters = json_parameters(text)
        if parameters is None:
            return None
        return StreamRequest(self.config, self.config_is_text, _text_value(parameters.get("config")),
                             _text_value(parameters.get("customconfig")),
                             _true(parameters.get(COMPARISON_PARAMETER)), text)


def json_parameters(text: str) -> dict[str, Any] | None:
    """The ``parameters`` object of a JSON text, or ``None`` when the text is not JSON holding one."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    parameters = value.get("parameters") if isinstance(value, dict) else None
    return parameters if isinstance(parameters, dict) else None


def _text_value(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _true(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value == 1
    return isinstance(value, str) and value.strip().lower() in TRUE_TEXTS
