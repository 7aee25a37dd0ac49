"""Option choices read from the registries each time click needs them (help, parsing): a name registered in one line
is a choice at once, and building the CLI imports neither torch nor ONNX Runtime."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click

SHOW_DEFAULTS = {"show_default": True}


class RegistryChoice(click.Choice):
    """A :class:`click.Choice` whose choices are read from a registry each time they are needed (help, parsing):
    a name registered in one line is a choice at once, and building the CLI imports neither torch nor ONNX Runtime.
    """

    def __init__(self, names: Callable[[], Sequence[str]]):
        self._names = names
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self._names())

    @choices.setter
    def choices(self, _: Any) -> None:  # click.Choice.__init__ assigns it; the registry is the source
        pass


def _calibration_methods() -> list[str]:
    from compressor.export.precision.options import CALIBRATION_METHODS

    return list(CALIBRATION_METHODS)


def _providers() -> list[str]:
    from compressor.export.runtimes.registry import runtime_choices

    return runtime_choices()


def _formulations() -> list[str]:
    from compressor.export.graph.scanner_graph import exportable_formulations

    return ["auto", *exportable_formulations()]


def _targets() -> list[str]:
    from compressor.export.targets.registry import EXPORT_TARGETS

    return EXPORT_TARGETS.names()


def _triton_instances() -> list[str]:
    from compressor.export.serving import INSTANCE_KINDS

    return list(INSTANCE_KINDS)


def _sources() -> list[str]:
    from compressor.export.scanner.input_formats import source_names

    return source_names(without_model=True)


def _reconstruct_sources() -> list[str]:
    from compressor.export.scanner.input_formats import source_names

    return source_names()  # raw scans and streams too: reconstruct only


SOURCES = RegistryChoice(_sources)
RECONSTRUCT_SOURCES = RegistryChoice(_reconstruct_sources)
CALIBRATION_METHODS = RegistryChoice(_calibration_methods)
PROVIDERS = RegistryChoice(_providers)
PROVIDER_HELP = "Runtime: an ONNX Runtime execution provider, or openvino (OpenVINO's CPU runtime)."
FORMULATIONS = RegistryChoice(_formulations)
TARGETS = RegistryChoice(_targets)
TRITON_INSTANCES = RegistryChoice(_triton_instances)


def given_options(names: Sequence[str]) -> list[str]:
    """The options among ``names`` (parameter names) given on the command line or by environment, as ``--flags``."""
    from click.core import ParameterSource

    context = click.get_current_context()
    return [f"--{name.replace('_', '-')}" for name in names
            if context.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)]


