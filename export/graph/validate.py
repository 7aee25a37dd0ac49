"""Validation of every export, in the style of Hugging Face Optimum's ``validate_model_outputs``.

Checks, all run and collected before anything is reported (one summary error listing every failure):

1. ``onnx.checker.check_model`` (full check, with shape inference);
2. the graph declares exactly the inputs and outputs of :mod:`compressor.export.exported_file` (names, dynamic
   batch);
3. the chosen runtime (an ONNX Runtime provider, every node run by it as read from a profile; or OpenVINO, which
   compiles the whole graph for its CPU device or refuses it);
4. that runtime's outputs against the PyTorch model, as trained (``torch.fft`` DF), on real validation slices;
5. ``onnx.reference.ReferenceEvaluator`` (a second, independent runtime) on one slice against PyTorch.

Tolerance: an output fails when its max absolute error exceeds :data:`RELATIVE_TOLERANCE` times the max absolute
value of the PyTorch reference of that output (the reconstruction's max is ~1 in normalised units).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx.reference import ReferenceEvaluator

from compressor.errors import first_line
from compressor.export.exported_file import INPUT_NAMES, QualityRecord, graph_outputs
from compressor.export.graph.scanner_graph import graph_output_tensors
from compressor.export.runtimes.base import Session
from compressor.export.runtimes.session import ExportedModel, graph_feed
from compressor.models.base import CascadeModel
from compressor.physics import apply_mask, normalise_kspace
from compressor.physics.normalisation import NormalisedInput
from compressor.rundir import PrecisionCheckEntry

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
    precision: PrecisionCheck | None = None

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
        The graph's outputs by name (:func:`~compressor.export.exported_file.graph_outputs` of the model's image
        channels),
        as training defines them (:func:`compressor.physics.normalisation.normalise_kspace`): e.g. ``{"image":
        (S, H, W) normalised, "scale": (S,)}`` for a 1-channel model.
    """
    channels = model.image_channels
    chunks = []
    for start in range(0, len(kspace), VALIDATION_BATCH):
        normalised, mask_tensor = model_input(kspace[start:start + VALIDATION_BATCH], mask, channels)
        image = model(normalised.zero_filled, normalised.kspace, mask_tensor)
        chunks.append([output.numpy() for output in graph_output_tensors(image, normalised.scale)])
    return {name: np.concatenate(parts) for name, parts in zip(graph_outputs(channels).names, zip(*chunks))}


def model_input(kspace: np.ndarray, mask: np.ndarray, channels: int) -> tuple[NormalisedInput, torch.Tensor]:
    """The PyTorch model's input for raw k-space ``(B, H, W)`` complex uncentred and ``mask`` ``(H, W)``, through the
    training data path: the :class:`~compressor.physics.normalisation.NormalisedInput` and the mask
    ``(1, 1, H, W)``; ``model(input.zero_filled, input.kspace, mask)`` is the normalised reconstruction."""
    mask_tensor = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
    pairs = torch.view_as_real(torch.from_numpy(np.asarray(kspace, dtype=np.complex64)))[:, None]
    return normalise_kspace(apply_mask(pairs, mask_tensor), channels=channels), mask_tensor


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
    (:func:`~compressor.export.exported_file.graph_outputs`), batch axis symbolic."""
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


def check_file(path: Path, exported: ExportedModel, feed: dict[str, np.ndarray],
               report: ValidationReport) -> onnx.ModelProto:
    """The checks every exported file gets, whatever its precision, added to ``report``: ``onnx.checker`` (full), the
    declared inputs and outputs (:func:`check_declared_io`), and every node of a run on ``feed`` on the chosen
    runtime (:meth:`~compressor.export.runtimes.base.Runtime.node_providers`). Returns the loaded graph."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        report.failures.append(OutputMatchError(f"onnx.checker: {first_line(error)}"))
    proto = onnx.load(str(path))
    report.failures += check_declared_io(proto, exported.metadata.image_channels)
    report.node_providers = exported.runtime.node_providers(path, feed)
    strays = exported.runtime.stray_providers(report.node_providers)
    if strays:
        report.failures.append(OutputMatchError(f"nodes ran on {strays}, not only on {exported.runtime.name}"))
    return proto


def validate_export(path: Path, exported: ExportedModel, model: CascadeModel, kspace: np.ndarray,
                    mask: np.ndarray, relative_tolerance: float = RELATIVE_TOLERANCE) -> ValidationReport:
    """Run every check of the module docstring on the exported file ``path``, collecting failures.

    Args:
        path: the ONNX file.
        exported: that file opened with the chosen provider (:func:`compressor.export.runtimes.session.open_exported`).
        model: the PyTorch model as trained, CPU, eval mode.
        kspace: validation k-space ``(S, H, W)`` complex, uncentred, undersampled with ``mask``.
        mask: ``(H, W)`` 0/1, uncentred.
    """
    report = ValidationReport()
    feed = graph_feed(kspace[:1], mask)
    proto = check_file(path, exported, feed, report)
    names = exported.metadata.outputs.names

    reference = pytorch_reference(model, kspace, mask)
    batches = [exported.run_outputs(kspace[start:start + VALIDATION_BATCH], mask)
               for start in range(0, len(kspace), VALIDATION_BATCH)]
    comparisons, failures = compare_outputs(
        reference, {name: np.concatenate([batch[name] for batch in batches]) for name in names},
        exported.runtime.label, relative_tolerance)
    report.comparisons += comparisons
    report.failures += failures

    evaluated = ReferenceEvaluator(proto).run(None, feed)
    comparisons, failures = compare_outputs({name: value[:1] for name, value in reference.items()},
                                            dict(zip(names, evaluated)), "onnx.reference", relative_tolerance)
    report.comparisons += comparisons
    report.failures += failures
    return report


# --- precision files (int8, fp16): validation in image terms against the fp32 export --------------------------------

LINE_TOLERANCE = 1e-4
"""The largest deviation of a precision file's sampled k-space from the measurement, relative to max |measurement|,
that is still fp32 rounding (the fp32 export's own deviation is ~1e-6 of it)."""


@dataclass(frozen=True)
class QualitySlices:
    """Slices with known fully sampled images, on which a precision's image quality is measured.

    Attributes:
        kspace: ``(S, H, W)`` complex, uncentred, undersampled with the export's mask.
        images: ``(S, H, W)`` the fully sampled images whose masked orthonormal FFT is ``kspace`` (same units).
        source: where they come from, for the metadata (e.g. ``"the run's validation slices"``).
    """

    kspace: np.ndarray
    images: np.ndarray
    source: str


@dataclass(frozen=True)
class ImageQuality:
    """A precision file's image quality relative to the fp32 export, on :class:`QualitySlices`.

    Attributes:
        psnr_loss: mean PSNR of the fp32 export minus mean PSNR of the precision file, dB, both against the fully
            sampled images (magnitudes in the input's units; positive: the precision file is worse).
        ssim_loss: the same for SSIM.
        psnr_fp32: the fp32 export's mean PSNR, for context.
        slices: how many slices.
    """

    psnr_loss: float
    ssim_loss: float
    psnr_fp32: float
    slices: int

    def to_json(self) -> dict[str, float]:
        return {"delta_psnr_db": -self.psnr_loss, "delta_ssim": -self.ssim_loss, "psnr_fp32_db": self.psnr_fp32,
                "slices": self.slices}

    def record(self, measured_on: str, source: str) -> QualityRecord:
        """What a precision file records of it (its ``precision_quality``): measured against the fp32 export by the
        runtime labelled ``measured_on`` on slices of ``source``."""
        return QualityRecord(**self.to_json(), reference="fp32 export", measured_on=measured_on, source=source)


def batched_outputs(run: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]], kspace: np.ndarray,
                    mask: np.ndarray) -> dict[str, np.ndarray]:
    """Every named output of ``run(kspace chunk, mask)`` (e.g. :meth:`~compressor.export.runtimes.session.ExportedModel.
    run_outputs`) over ``kspace`` ``(S, H, W)``, in chunks of :data:`VALIDATION_BATCH` slices."""
    batches = [run(kspace[start:start + VALIDATION_BATCH], mask) for start in range(0, len(kspace), VALIDATION_BATCH)]
    return {name: np.concatenate([batch[name] for batch in batches]) for name in batches[0]}


def magnitudes(outputs: dict[str, np.ndarray], image_channels: int) -> np.ndarray:
    """``|image * scale|`` ``(S, H, W)`` float64 in the input's units from the graph's named outputs."""
    names = graph_outputs(image_channels)
    return np.abs(names.image(outputs) * outputs[names.names[-1]][:, None, None]).astype(np.float64)


def image_quality(candidate: np.ndarray, fp32: np.ndarray, truth: np.ndarray) -> ImageQuality:
    """Quality of ``candidate`` relative to ``fp32``, both ``(S, H, W)`` magnitudes scored against ``truth``
    (``(S, H, W)``, real or complex: its magnitude is scored)."""
    from compressor.evaluate.metrics import psnr, ssim

    target = np.abs(truth).astype(np.float64)
    psnr_fp32 = float(np.mean(psnr(fp32, target)))
    return ImageQuality(psnr_loss=psnr_fp32 - float(np.mean(psnr(candidate, target))),
                        ssim_loss=float(np.mean(ssim(fp32, target)) - np.mean(ssim(candidate, target))),
                        psnr_fp32=psnr_fp32, slices=len(target))


def sampled_line_deviation(outputs: dict[str, np.ndarray], kspace: np.ndarray, mask: np.ndarray,
                           image_channels: int) -> float:
    """The largest deviation of the reconstruction's sampled k-space from the measurement the DF enforces, relative
    to max |measurement|.

    The DF (``lambda -> inf``) replaces the sampled k-space of the CNN's output by the measurement whatever the CNN
    computed: ``F(image * scale) = F(x_u)`` on the sampled points, with ``x_u = F^-1(M y)`` as the model takes it.
    A 2-channel model takes ``x_u`` itself, so that holds on every sampled point (there ``F(x_u) = y``). A 1-channel
    model takes ``Re(x_u)`` and projects with the real part of ``P = F^H M F``; it holds where the mirrored point
    ``-k`` is sampled too (there ``F(Re(P z)) = F(z)`` for a real ``z``), so those points are compared.

    Args:
        outputs: the graph's named outputs for ``kspace`` (:func:`~compressor.export.exported_file.graph_outputs`).
        kspace: ``(S, H, W)`` complex, uncentred, undersampled with ``mask``.
        mask: ``(H, W)`` 0/1, uncentred.
    """
    names = graph_outputs(image_channels)
    image = names.image(outputs).astype(np.complex128) * outputs[names.names[-1]][:, None, None]
    zero_filled = np.fft.ifft2(kspace.astype(np.complex128) * mask, norm="ortho")
    sampled = np.asarray(mask) != 0
    if image_channels == 1:
        zero_filled = zero_filled.real
        mirrored = np.roll(sampled[::-1, ::-1], (1, 1), axis=(0, 1))  # mask[-k] (uncentred: index (-i) mod H)
        sampled = sampled & mirrored
    deviation = np.abs(np.fft.fft2(image, norm="ortho") - np.fft.fft2(zero_filled, norm="ortho"))[:, sampled]
    return float(deviation.max() / max(np.abs(kspace).max(), 1e-30))


@dataclass
class PrecisionCheck:
    """What :func:`validate_precision` measured besides the shared checks.

    Attributes:
        quality: image quality relative to the fp32 export.
        bound: the largest ``quality.psnr_loss`` allowed (dB).
        line_deviation: :func:`sampled_line_deviation` of the precision file (the fp32 export's for context).
        line_deviation_fp32: the fp32 export's.
        reference_parity: max |onnx.reference - the chosen runtime| of the same file on one slice relative to max
            |output| (``None`` where onnx.reference does not run the file's ops).
        reference_note: why there is no parity figure, if there is none.
    """

    quality: ImageQuality
    bound: float
    line_deviation: float
    line_deviation_fp32: float
    reference_parity: float | None
    reference_note: str = ""

    def entry(self) -> PrecisionCheckEntry:
        """What ``exports.json`` records of it (:class:`compressor.rundir.PrecisionCheckEntry`)."""
        return PrecisionCheckEntry(**self.quality.to_json(), max_psnr_loss_db=self.bound,
                                   line_deviation=self.line_deviation, line_deviation_fp32=self.line_deviation_fp32,
                                   reference_parity=self.reference_parity, reference_note=self.reference_note)


class QualityLossError(ExportValidationError):
    """A precision file loses more image quality than the user's bound, or its DF no longer keeps the lines."""


def session_outputs(session: Session, image_channels: int
                    ) -> Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]:
    """``(kspace (B, H, W) complex, mask (H, W)) ->`` the graph's named outputs, run by ``session`` (like
    :meth:`~compressor.export.runtimes.session.ExportedModel.run_outputs`, for a graph without an
    :class:`ExportedModel`)."""
    names = list(graph_outputs(image_channels).names)
    return lambda kspace, mask: dict(zip(names, session.run(names, graph_feed(kspace, mask)), strict=True))


REFERENCE_OPSET = 19
"""``onnx.reference`` implements ``QuantizeLinear``/``DequantizeLinear`` from opset 19 on (not 13-18, whose
semantics for float32 scales opset 19 keeps); a quantized graph is converted to it for the parity check only."""


def reference_opset(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` as ``onnx.reference`` can run it: a quantized graph of an older opset converted to
    :data:`REFERENCE_OPSET` (``onnx.version_converter``); any other graph unchanged."""
    quantized = any(node.op_type in {"QuantizeLinear", "DequantizeLinear"} for node in proto.graph.node)
    opset = next((entry.version for entry in proto.opset_import if entry.domain in {"", "ai.onnx"}), REFERENCE_OPSET)
    if not quantized or opset >= REFERENCE_OPSET:
        return proto
    from onnx import version_converter

    return version_converter.convert_version(proto, REFERENCE_OPSET)


def validate_precision(path: Path, exported: ExportedModel, fp32_graph: onnx.ModelProto, kspace: np.ndarray,
                       mask: np.ndarray, quality_slices: QualitySlices, max_psnr_loss: float,
                       parity_tolerance: float) -> ValidationReport:
    """The checks of a precision (non-fp32) file, collected like :func:`validate_export`'s: it cannot meet the fp32
    tolerance against PyTorch, so it is validated in image terms against the fp32 export of the same model.

    1. ``onnx.checker``, the declared inputs and outputs, every node on the chosen provider (as for fp32);
    2. ΔPSNR and ΔSSIM against the fp32 export on ``quality_slices``: a PSNR loss above ``max_psnr_loss`` fails and
       says by how much;
    3. the sampled k-space of its reconstructions on ``kspace`` deviates from the measurement by at most
       :data:`LINE_TOLERANCE` (:func:`sampled_line_deviation`): the DF stayed fp32;
    4. ``onnx.reference`` runs the same file on one slice and agrees with ONNX Runtime within ``parity_tolerance`` x
       max |output| (where onnx.reference implements the file's ops; a note says when it does not).

    The report's comparisons are the file's outputs against the fp32 export's (both on the chosen runtime), for the
    record.
    """
    report = ValidationReport()
    feed = graph_feed(kspace[:1], mask)
    proto = check_file(path, exported, feed, report)
    channels = exported.metadata.image_channels
    names = exported.metadata.outputs.names

    fp32 = session_outputs(exported.runtime.session(fp32_graph.SerializeToString()), channels)
    quality = image_quality(magnitudes(batched_outputs(exported.run_outputs, quality_slices.kspace, mask), channels),
                            magnitudes(batched_outputs(fp32, quality_slices.kspace, mask), channels),
                            quality_slices.images)
    if quality.psnr_loss > max_psnr_loss:
        report.failures.append(QualityLossError(
            f"PSNR loss {quality.psnr_loss:.3f} dB against the fp32 export exceeds the bound {max_psnr_loss:g} dB by "
            f"{quality.psnr_loss - max_psnr_loss:.3f} dB (on {quality.slices} slices of {quality_slices.source})"))

    candidate, reference = batched_outputs(exported.run_outputs, kspace, mask), batched_outputs(fp32, kspace, mask)
    comparisons, _ = compare_outputs(reference, candidate, exported.runtime.label, float("inf"))
    report.comparisons += comparisons
    deviation = sampled_line_deviation(candidate, kspace, mask, channels)
    if deviation > LINE_TOLERANCE:
        report.failures.append(QualityLossError(
            f"sampled k-space deviates from the measurement by {deviation:.2e} of max |measurement|, "
            f"{deviation / LINE_TOLERANCE:.1f}x the fp32 rounding tolerance {LINE_TOLERANCE:g}: the DF is not fp32"))

    parity, note = None, ""
    try:
        evaluated = dict(zip(names, ReferenceEvaluator(reference_opset(proto)).run(None, feed)))
    except (NotImplementedError, TypeError, ValueError, RuntimeError) as error:
        note = f"onnx.reference cannot run this file ({type(error).__name__}: {first_line(error)[:120]})"
    else:
        first = {key: value[:1] for key, value in candidate.items()}
        comparisons, failures = compare_outputs(first, evaluated, "onnx.reference", parity_tolerance)
        report.comparisons += comparisons
        report.failures += failures
        parity = max(c.relative_error for c in comparisons) if comparisons else None
    report.precision = PrecisionCheck(quality, max_psnr_loss, deviation,
                                      sampled_line_deviation(reference, kspace, mask, channels), parity, note)
    return report
