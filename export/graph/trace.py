"""Trace the scanner graph to ONNX, and the phantom data used when no real slices are at hand.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export`` based exporter, opset 18). It handles the graph
of :mod:`compressor.export.graph.scanner_graph` directly, including the ``torch.fft`` baseline the benchmark compares
against (the TorchScript exporter rejects ``aten::fft_*``), and it is the exporter PyTorch maintains. ``torch.export``
specialises a dimension whose example size is 1, so the graph is traced with a batch of :data:`TRACE_BATCH` slices and
the batch axis is declared dynamic.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from compressor.errors import InputError
from compressor.export.exported_file import INPUT_NAMES
from compressor.export.graph.scanner_graph import FORMULATIONS, ScannerGraph
from compressor.export.graph.validate import QualitySlices
from compressor.export.run_models import simulated_kspace
from compressor.masks import SamplingMask, line_axis

OPSET = 18
TRACE_BATCH = 2


@dataclass(frozen=True)
class Formulation:
    """The DF formulation chosen for a graph and, for ``"lines"``, the axis of the mask's lines."""

    name: str
    line_axis: int | None


def resolve_formulation(requested: str, mask: SamplingMask) -> Formulation:
    """``"auto"``: ``"lines"`` when the mask is made of whole lines (its :func:`~compressor.masks.line_axis`, along
    ``W`` preferred), else ``"dft"``.

    ``"lines"`` for a mask that is not whole lines raises :class:`InputError`.
    """
    if requested != "auto" and requested not in FORMULATIONS:
        raise InputError(f"unknown formulation {requested!r}; valid: auto, {', '.join(FORMULATIONS)}")
    axis = line_axis(mask.values)
    if requested == "auto":
        return Formulation("lines", axis) if axis is not None else Formulation("dft", None)
    needs_axis = FORMULATIONS.get(requested).needs_line_axis
    if needs_axis and axis is None:
        raise InputError(f"the {requested!r} formulation needs a mask of whole lines; mask {mask.digest()} is not")
    return Formulation(requested, axis if needs_axis else None)


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the dynamo exporter's progress prints, warnings and registry log lines during one export."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def trace_graph(graph: ScannerGraph, opset: int = OPSET) -> onnx.ModelProto:
    """Export ``graph`` with the dynamo exporter: inputs/outputs named as in :mod:`~compressor.export.exported_file`
    (the outputs by the model's image channels), batch dynamic."""
    height, width = graph.image_size
    generator = torch.Generator().manual_seed(0)
    # Distinct tensors per input: torch.export would merge one tensor passed twice into a single graph input.
    kspace_real, kspace_imag = torch.randn(2, TRACE_BATCH, height, width, generator=generator)
    mask = torch.ones(height, width)
    batch = torch.export.Dim("batch")
    with quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            graph.eval(), (kspace_real, kspace_imag, mask), None, dynamo=True, opset_version=opset,
            input_names=list(INPUT_NAMES), output_names=list(graph.output_names),
            dynamic_shapes=({0: batch}, {0: batch}, None), verbose=False,
        )
    return program.model_proto


def phantom_images(shape: tuple[int, int], count: int = 4, image_channels: int = 1) -> np.ndarray:
    """Shepp-Logan phantoms of ``shape``, shifted and scaled, ``(count, H, W)``: float32, or for a 2-channel model
    complex64 with a synthetic phase (:func:`compressor.data.phase.with_synthetic_phase`), so that validation
    exercises the imaginary channel as measured data would."""
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    base = resize(shepp_logan_phantom(), shape, anti_aliasing=True).astype(np.float32)
    images = np.stack([np.roll(base, (3 * i, -2 * i), axis=(0, 1)) * (1.0 + 0.5 * i) for i in range(count)])
    if image_channels == 2:
        from compressor.data.phase import with_synthetic_phase

        images = np.stack([with_synthetic_phase(image, "phantom", i) for i, image in enumerate(images)])
    return images


def phantom_kspace(mask: SamplingMask, count: int = 4, image_channels: int = 1) -> np.ndarray:
    """Validation k-space when no data is at hand: :func:`phantom_images` undersampled with ``mask``,
    ``(count, H, W)``. Used only when neither a run's validation slices nor a data file is given (the export says
    so)."""
    return simulated_kspace(phantom_images(mask.shape, count, image_channels), mask.values)


def phantom_quality_slices(mask: SamplingMask, image_channels: int = 1, count: int = 8) -> QualitySlices:
    """Quality slices when the validation k-space has no known images: :func:`phantom_images` and their k-space."""
    images = phantom_images(mask.shape, count, image_channels)
    return QualitySlices(simulated_kspace(images, mask.values), images, "Shepp-Logan phantoms")


