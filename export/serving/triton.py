"""The Triton Inference Server model repository: ``compress export --triton-repo DIR``.

Layout, one entry per exported file (any precision)::

    DIR/<model>/config.pbtxt        ModelConfig in protobuf text format, backend "onnxruntime"
                                    (:mod:`~compressor.export.serving.triton_config`)
    DIR/<model>/1/model.onnx        the export with its training mask folded in
                                    (:mod:`~compressor.export.serving.mask_folding`)

**Names.** Triton model names are folder names (and URL path segments): :func:`triton_model_name` maps an export's
name, e.g. the ``results.json`` name ``sft_kd/at/d3c5@4x``, to ``sft_kd-at-d3c5-4x``: every run of characters other
than letters, digits, ``_`` and ``.`` becomes one ``-``; an export that is not fp32 (its ``precision`` metadata)
gets ``-<precision>`` appended, e.g. ``sft_kd-at-d3c5-4x-int8``.

Existing entries, staging and the checks before anything is written: :mod:`~compressor.export.serving.repository`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from compressor.errors import InputError
from compressor.export.exported_file import Precision
from compressor.export.runtimes.registry import AUTO
from compressor.export.serving.mask_folding import FoldedExport
from compressor.export.serving.repository import (
    SERVING_REPOSITORIES,
    PlannedEntry,
    RepositoryEntry,
    RepositoryFormat,
    ServedExport,
)
from compressor.export.serving.triton_config import TritonOptions, config_text

VERSION = "1"
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"
DEFAULT_OPTIONS = TritonOptions()


def triton_model_name(name: str, precision: str = Precision.FP32) -> str:
    """The Triton model (folder) name of an export called ``name`` of ``precision``.

    Every run of characters other than ASCII letters, digits, ``_`` and ``.`` becomes ``-``, leading and trailing
    ``-``/``.`` are dropped, and a precision other than fp32 is appended: ``sft_kd/at/d3c5@4x`` ->
    ``sft_kd-at-d3c5-4x``; with ``int8``, ``sft_kd-at-d3c5-4x-int8``.
    """
    base = re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-.")
    if not base:
        raise InputError(f"the export name {name!r} has no letters or digits to name a Triton model")
    return base if precision == Precision.FP32 else f"{base}-{triton_model_name(precision)}"


@SERVING_REPOSITORIES.register("triton")
class TritonRepository(RepositoryFormat):
    """Triton's model repository (module docstring), served by its ``onnxruntime`` backend with ``options``."""

    title = "Triton"
    option = "--triton-repo"
    model_file = f"{VERSION}/{MODEL_FILE}"

    def __init__(self, options: TritonOptions = DEFAULT_OPTIONS):
        self.options = options

    def model_name(self, name: str, precision: str) -> str:
        return triton_model_name(name, precision)

    def entry_files(self, name: str, folded: FoldedExport) -> dict[str, bytes]:
        return {self.model_file: folded.model.SerializeToString(),
                CONFIG_FILE: config_text(name, folded.model, self.options, folded.source).encode()}


def write_triton_repository(sources: Sequence[ServedExport], repository: str | Path,
                            options: TritonOptions = DEFAULT_OPTIONS, provider: str = AUTO) -> list[RepositoryEntry]:
    """:meth:`TritonRepository.write`: an entry ``repository/<model>`` for every export in ``sources``, each checked
    on ONNX Runtime (``provider`` when it is one of its execution providers, else its CPU provider)."""
    return TritonRepository(options).write(sources, repository, provider)


def check_planned_entries(planned: Sequence[PlannedEntry], repository: str | Path) -> None:
    """:meth:`TritonRepository.check_planned`: what :func:`write_triton_repository` would refuse, refused before the
    exports exist."""
    TritonRepository().check_planned(planned, repository)
