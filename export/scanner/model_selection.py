r"""Which served model reconstructs a scan: a pure function of the request (config message, JSON parameters), the
scan and the served models (:func:`select_model`).

**Names.** The request's names are tried in the order they win (:meth:`StreamRequest.names`:
``parameters.customconfig``, ``parameters.config``, the config message), and only the first counts, as in
python-ismrmrd-server (an unknown name falls back to the default, never to a lower-ranked name). A served model
answers to each of :attr:`ModelProfile.names` (:mod:`compressor.export.scanner.served_models`: a file's stem, an
fp32 export's results name, a Triton model's name), compared case-insensitively.

* A name that is a served model's selects it, if it fits the scan; if not, the answer is an error (never
  reconstruct a scan that lacks lines the model was trained with).
* Any other name is generic: :data:`GENERIC_NAMES` (``default``, ``openrecon``, the anchor's default
  ``invertcontrast``, ...), a Gadgetron-style XML config text, no config at all, or a name no model answers to.
  Then the models that fit the scan are the candidates: exactly one is chosen; among several, ``default`` (the
  server's ``--default-model``) is chosen if it is one of them; while the acquired lines are not known yet (before
  the first slice is complete) several candidates wait (:attr:`Selection.model` is ``None``); otherwise several, or
  none, are an error listing the served models and what the scan needs.

**Fit** (:func:`misfit`): the model's image grid is the scan's (readout after oversampling removal x phase-encode
lines); a multi-coil scan needs a 2-channel model (coil compression gives a complex virtual coil); once the first
slice is complete, every line of the model's mask was acquired. A model chosen before that (the only one that fits,
or one named) is held to its lines by every slice's checks
(:func:`~compressor.export.scanner.raw_input.prepare_slice`, which lists the missing lines): a scan lacking lines the
model was trained with is never reconstructed. Acquired lines outside the mask are zeroed and counted.

Every error is a :class:`SelectionError` (an :class:`~compressor.errors.InputError`): one line, sent to the client as
``ERROR <reason>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from compressor.data.mrd_header import EncodingGeometry
from compressor.errors import InputError
from compressor.export.scanner.raw_input import step1_of_columns
from compressor.export.scanner.stream_parameters import StreamRequest

GENERIC_NAMES = frozenset({"default", "openrecon", "invertcontrast", "simplefft", "null", "savedataonly"})
NAME_HINT = "name one with parameters.customconfig (or config), or start the server with --default-model"


class SelectionError(InputError):
    """No served model may reconstruct the scan, or several may and none is named."""


@dataclass(frozen=True)
class ModelProfile:
    """What a served model answers to and what scans it fits (no session: selection is pure).

    Attributes:
        name: its served name (a file's stem, a Triton model's name).
        aliases: other names it answers to (an fp32 export's results name).
        image_size: ``(H, W)`` (readout, phase-encode).
        lines: ``(W,)`` bool, uncentred: the phase-encode lines (columns) its mask samples.
        image_channels: 1 (real) or 2 (complex).
    """

    name: str
    aliases: tuple[str, ...]
    image_size: tuple[int, int]
    lines: np.ndarray
    image_channels: int

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def describe(self) -> str:
        """E.g. ``"d3c5 (16x12, 5 lines, 2-channel)"``."""
        height, width = self.image_size
        return f"{self.name} ({height}x{width}, {int(self.lines.sum())} lines, {self.image_channels}-channel)"


@dataclass(frozen=True)
class ScanDescription:
    """What the selection knows of a scan.

    Attributes:
        geometry: the header's encoding (image grid, ``kspace_encoding_step_1`` limits).
        coils: receive channels (``None``: no acquisition seen yet).
        acquired_lines: ``(W,)`` bool, uncentred: lines of the first complete slice (``None``: none complete yet).
    """

    geometry: EncodingGeometry
    coils: int | None = None
    acquired_lines: np.ndarray | None = None

    def describe(self) -> str:
        """What the scan needs of a model, in words."""
        height, width = self.geometry.image_shape
        parts = [f"image grid {height}x{width}"]
        if self.acquired_lines is not None:
            parts.append(f"a mask within its {int(self.acquired_lines.sum())} acquired lines")
        if self.coils is not None:
            parts.append(f"{self.coils} coil{'s' if self.coils != 1 else ''}"
                         + (" (a 2-channel model)" if self.coils > 1 else ""))
        return ", ".join(parts)


@dataclass(frozen=True)
class Selection:
    """The outcome of :func:`select_model`.

    Attributes:
        model: the model to run; ``None`` while several fit and the acquired lines are not known.
        reason: why, in words (for the log).
        candidates: the models still in the running when ``model`` is ``None`` (else just ``model``).
        label: why, in a few words (for ``ImageComment``, at most 64 characters).
    """

    model: ModelProfile | None
    reason: str
    candidates: tuple[ModelProfile, ...]
    label: str = ""


def misfit(profile: ModelProfile, scan: ScanDescription) -> str | None:
    """Why ``profile`` cannot reconstruct ``scan`` (module docstring), ``None`` if it can."""
    if tuple(profile.image_size) != tuple(scan.geometry.image_shape):
        return f"its image grid is {profile.image_size[0]}x{profile.image_size[1]}"
    if scan.coils is not None and scan.coils > 1 and profile.image_channels != 2:
        return "it is a 1-channel model and the scan has several coils"
    if scan.acquired_lines is not None:
        missing = np.flatnonzero(profile.lines & ~scan.acquired_lines)
        if missing.size:
            counters = sorted(step1_of_columns(missing, scan.geometry))
            return f"its mask samples {missing.size} lines the scan did not acquire (kspace_encode_step_1 " \
                   f"{', '.join(map(str, counters))})"
    return None


def _listing(models: Sequence[ModelProfile], scan: ScanDescription) -> str:
    return f"the scan needs {scan.describe()}; served: {'; '.join(model.describe() for model in models)}"


def _named(models: Sequence[ModelProfile], name: str) -> ModelProfile | None:
    wanted = name.casefold()
    return next((model for model in models if wanted in {known.casefold() for known in model.names}), None)


def select_model(models: Sequence[ModelProfile], request: StreamRequest, scan: ScanDescription,
                 default: str | None = None) -> Selection:
    """The served model for ``scan`` (module docstring), or a :class:`SelectionError` listing the served models
    and what the scan needs. ``default``: the server's ``--default-model`` (a served name) or ``None``."""
    asked = request.names()
    if asked:
        name, where = asked[0]
        chosen = _named(models, name)
        if chosen is not None:
            why = misfit(chosen, scan)
            if why is not None:
                raise SelectionError(f"{where} names {name!r}, which cannot reconstruct this scan: {why}; "
                                     f"{_listing(models, scan)}")
            return Selection(chosen, f"named by {where}", (chosen,), f"named by {where}")
        asked_text = f"{where} {name!r} is generic" if name.casefold() in GENERIC_NAMES \
            else f"{where} {name!r} names no served model"
    else:
        asked_text = "no model named"
    fitting = tuple(model for model in models if misfit(model, scan) is None)
    if len(fitting) == 1:
        return Selection(fitting[0], f"the only served model that fits the scan ({asked_text})", fitting,
                         "the only served model that fits")
    if not fitting:
        raise SelectionError(f"no served model fits this scan ({asked_text}): {_listing(models, scan)}")
    if scan.acquired_lines is None:
        return Selection(None, f"{len(fitting)} fit the header; waiting for the first slice's lines", fitting)
    preferred = _named(fitting, default) if default is not None else None
    if preferred is not None:
        return Selection(preferred, f"the default model (--default-model) among {len(fitting)} that fit the scan "
                                    f"({asked_text})", fitting, "the default model among those that fit")
    raise SelectionError(f"{len(fitting)} served models fit this scan ({asked_text}): "
                         f"{', '.join(model.name for model in fitting)}; {NAME_HINT}")
