"""Validation of every export, in the style of Hugging Face Optimum's ``validate_model_outputs``.

Checks, all run and collected before anything is reported (one summary error listing every failure):

1. ``onnx.checker.check_model`` (full check, with shape inference);
2. the graph declares exactly the inputs and outputs of :mod:`compressor.export.runtime` (names, dynamic batch);
3. ONNX Runtime on the chosen provider, every node run by that provider (read from a profile);
4. ONNX Runtime outputs against the PyTorch model, as trained (``torch.fft`` DF), on real validation slices;
5. ``onnx.reference.ReferenceEvaluator`` (a second, independent runtime) on one slice against PyTorch.

Tolerance: an output fails when its max absolute error exceeds :data:`RELATIVE_TOLERANCE` times the max absolute
value of the PyTorch reference of that output (the reconstruction's max is ~1 in normalised units).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx.reference import ReferenceEvaluator

from compressor.export.graph import graph_output_tensors
from compressor.export.runtime import INPUT_NAMES, ExportedModel, graph_feed, graph_outputs, node_providers
from compressor.models.base import CascadeModel
from compressor.physics import apply_mask, normalise_kspace

RELATIVE_TOLERANCE = 1e-4
VALIDATION_BATCH = 8


class ExportValidationError(ValueError):
    """An exported model failed validation; ``failures`` holds each failed check (typed as below)."""

    def __init__(self, message: str, failures: list[ExportValidationError] | None = None):
        super().__init__(message)
        self.failures = failures or []


class ShapeError(ExportValidationError):
    """An output has another shape than the PyTorch reference (or the graph's declared I/O is wrong)."""


class AtolError(ExportValidationError):
    """An output differs from the PyTorch reference by more than the tolerance."""


class OutputMatchError(ExportValidationError):
    """The graph's inputs/outputs are not the declared names, a check raised, or a node left its provider."""


@dataclass(frozen=True)
class OutputComparison:
    """One output of one runtime compared with the PyTorch reference."""

    runtime: str
    output: str
    max_abs_error: float
    reference_max: float
    relative_tolerance: float = RELATIVE_TOLERANCE

    @property
    def tolerance(self) -> float:
        return self.relative_tolerance * self.reference_max

    @property
    def relative_error(self) -> float:
        return self.max_abs_error / self.reference_max if self.reference_max > 0 else float("inf")

    @property
    def passed(self) -> bool:
        return self.max_abs_error <= self.tolerance

    def describe(self) -> str:
        verdict = "ok" if self.passed else f"{self.max_abs_error / max(self.tolerance, 1e-30):.1f}x over"
        return (f"{self.runtime} {self.output}: max abs error {self.max_abs_error:.2e} vs tolerance "
                f"{self.tolerance:.2e} ({self.relative_tolerance:g} x max|reference| {self.reference_max:.3g}), "
                f"{verdict}")


@dataclass
class ValidationReport:
    """Everything validation measured; :meth:`raise_for_failures` turns failures into one error."""

    comparisons: list[OutputComparison] = field(default_factory=list)
    failures: list[ExportValidationError] = field(default_factory=list)
    node_providers: dict[str, str] = field(default_factory=dict)

    def comparison(self, runtime: str, output: str) -> OutputComparison:
        return next(c for c in self.comparisons if c.runtime == runtime and c.output == output)

    def worst(self, runtime: str, outputs: tuple[str, ...]) -> OutputComparison:
        """Of ``runtime``'s comparisons of ``outputs``, the one of largest relative error."""
        return max((self.comparison(runtime, output) for output in outputs), key=lambda c: c.relative_error)

    def raise_for_failures(self, path: Path) -> None:
        if self.failures:
            summary = "; ".join(str(failure) for failure in self.failures)
            raise ExportValidationError(f"{path.name} failed validation: {summary}", self.failures)


@torch.no_grad()
def pytorch_reference(model: CascadeModel, kspace: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """The trained model in PyTorch eager on raw k-space, through the training data path.

    Args:
        model: the model as trained (its own Fourier operator, ``torch.fft``), CPU, eval mode.
        kspace: ``(S, H, W)`` complex, uncentred, undersampled.
        mask: ``(H, W)`` 0/1, uncentred.

    Returns:
        The graph's outputs by name (:func:`~compressor.export.runtime.graph_outputs` of the model's image channels),
        as training defines them (:func:`compressor.physics.normalisation.normalise_kspace`): e.g. ``{"image":
        (S, H, W) normalised, "scale": (S,)}`` for a 1-channel model.
    """
    channels = model.image_channels
    mask_tensor = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
    chunks = []
    for start in range(0, len(kspace), VALIDATION_BATCH):
        chunk = torch.view_as_real(torch.from_numpy(np.asarray(kspace[start:start + VALIDATION_BATCH],
                                                               dtype=np.complex64)))[:, None]
        normalised = normalise_kspace(apply_mask(chunk, mask_tensor), channels=channels)
        image = model(normalised.zero_filled, normalised.kspace, mask_tensor)
        chunks.append([output.numpy() for output in graph_output_tensors(image, normalised.scale)])
    return {name: np.concatenate(parts) for name, parts in zip(graph_outputs(channels).names, zip(*chunks))}


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], runtime: str,
                    relative_tolerance: float = RELATIVE_TOLERANCE) -> tuple[list[OutputComparison],
                                                                             list[ExportValidationError]]:
    """Compare every reference output with ``candidate``; returns the comparisons and the failures found."""
    comparisons: list[OutputComparison] = []
    failures: list[ExportValidationError] = []
    if set(candidate) != set(reference):
        failures.append(OutputMatchError(f"{runtime} outputs {sorted(candidate)}, expected {sorted(reference)}"))
        return comparisons, failures
    for name, expected in reference.items():
        got = candidate[name]
        if got.shape != expected.shape:
            failures.append(ShapeError(f"{runtime} {name}: shape {got.shape} (ONNX) vs {expected.shape} (PyTorch)"))
            continue
        comparison = OutputComparison(runtime, name, float(np.max(np.abs(got.astype(np.float64) - expected))),
                                      float(np.max(np.abs(expected))), relative_tolerance)
        comparisons.append(comparison)
        if not comparison.passed:
            failures.append(AtolError(comparison.describe()))
    return comparisons, failures


def check_declared_io(model: onnx.ModelProto, image_channels: int = 1) -> list[ExportValidationError]:
    """The graph's inputs and outputs must be :data:`INPUT_NAMES` and the outputs of ``image_channels``
    (:func:`~compressor.export.runtime.graph_outputs`), batch axis symbolic."""
    failures: list[ExportValidationError] = []
    inputs = tuple(value.name for value in model.graph.input)
    outputs = tuple(value.name for value in model.graph.output)
    expected = graph_outputs(image_channels).names
    if inputs != INPUT_NAMES or outputs != expected:
        failures.append(OutputMatchError(f"graph I/O {inputs} -> {outputs}, expected {INPUT_NAMES} -> {expected}"))
        return failures
    batched = [v for v in (*model.graph.input, *model.graph.output) if v.name != "mask"]
    for value in batched:
        first = value.type.tensor_type.shape.dim[0]
        if not first.dim_param:
            failures.append(ShapeError(f"{value.name}: batch axis is fixed to {first.dim_value}, expected dynamic"))
    return failures


def validate_export(path: Path, exported: ExportedModel, model: CascadeModel, kspace: np.ndarray,
                    mask: np.ndarray, relative_tolerance: float = RELATIVE_TOLERANCE) -> ValidationReport:
    """Run every check of the module docstring on the exported file ``path``, collecting failures.

    Args:
        path: the ONNX file.
        exported: that file opened with the chosen provider (:func:`compressor.export.runtime.open_exported`).
        model: the PyTorch model as trained, CPU, eval mode.
        kspace: validation k-space ``(S, H, W)`` complex, uncentred, undersampled with ``mask``.
        mask: ``(H, W)`` 0/1, uncentred.
    """
    report = ValidationReport()
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        report.failures.append(OutputMatchError(f"onnx.checker: {str(error).splitlines()[0]}"))
    proto = onnx.load(str(path))
    names = exported.metadata.outputs.names
    report.failures += check_declared_io(proto, exported.metadata.image_channels)

    reference = pytorch_reference(model, kspace, mask)
    batches = [exported.run_outputs(kspace[start:start + VALIDATION_BATCH], mask)
               for start in range(0, len(kspace), VALIDATION_BATCH)]
    runtime = f"ONNX Runtime ({exported.provider})"
    comparisons, failures = compare_outputs(
        reference, {name: np.concatenate([batch[name] for batch in batches]) for name in names}, runtime,
        relative_tolerance)
    report.comparisons += comparisons
    report.failures += failures

    feed = graph_feed(kspace[:1], mask)
    report.node_providers = node_providers(path, exported.provider, feed)
    strays = sorted({provider for provider in report.node_providers.values() if provider != exported.provider})
    if strays:
        report.failures.append(OutputMatchError(f"nodes ran on {strays}, not only on {exported.provider}"))

    evaluated = ReferenceEvaluator(proto).run(None, feed)
    comparisons, failures = compare_outputs({name: value[:1] for name, value in reference.items()},
                                            dict(zip(names, evaluated)), "onnx.reference", relative_tolerance)
    report.comparisons += comparisons
    report.failures += failures
    return report
