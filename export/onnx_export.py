"""Export a trained DC-CNN, data-fidelity layers included, to one validated ONNX file.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export`` based exporter, opset 18). It handles the graph
of :mod:`compressor.export.graph` directly, including the ``torch.fft`` baseline the benchmark compares against (the
TorchScript exporter rejects ``aten::fft_*``), and it is the exporter PyTorch maintains; the TorchScript exporter is
deprecated. ``torch.export`` specialises a dimension whose example size is 1, so the graph is traced with a batch of
:data:`TRACE_BATCH` slices and the batch axis is declared dynamic.

The file is written under a temporary name, validated (:mod:`compressor.export.validate`), and renamed only when every
check passed: a failed export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

import compressor
from compressor.errors import InputError
from compressor.export.graph import EXPORTABLE_FORMULATIONS, FORMULATIONS, ScannerGraph, is_whole_lines
from compressor.export.run_models import (
    EXPORTS_FOLDER,
    RunModel,
    load_run_models,
    run_validation_kspace,
    simulated_kspace,
)
from compressor.export.runtime import INPUT_NAMES, OUTPUT_NAMES, ExportMetadata, open_exported
from compressor.export.validate import RELATIVE_TOLERANCE, ValidationReport, validate_export
from compressor.io import atomic_path, save_json
from compressor.masks import SamplingMask
from compressor.models.base import CascadeModel

OPSET = 18
TRACE_BATCH = 2


@dataclass(frozen=True)
class Formulation:
    """The DF formulation chosen for a graph and, for ``"lines"``, the axis of the mask's lines."""

    name: str
    line_axis: int | None


@dataclass
class ExportResult:
    """A validated export.

    Attributes:
        path: the ONNX file.
        max_abs_error: max |ONNX Runtime - PyTorch| of the reconstruction over the validation slices.
        relative_error: that error divided by max |PyTorch reconstruction|.
        tolerance: the absolute tolerance it passed (``1e-4 x max |PyTorch reconstruction|``).
        reference_evaluator_error: max |onnx.reference - PyTorch| on one slice.
        provider: the ONNX Runtime execution provider that ran the validation.
        formulation: the DF formulation in the graph.
        seconds: wall time of export plus validation.
        validation_slices: how many slices were compared.
        metadata: what the file records.
    """

    path: Path
    max_abs_error: float
    relative_error: float
    tolerance: float
    reference_evaluator_error: float
    provider: str
    formulation: str
    seconds: float
    validation_slices: int
    metadata: ExportMetadata

    def summary(self) -> dict[str, Any]:
        """A JSON-ready record of the export."""
        return {"file": str(self.path), "architecture": self.metadata.architecture,
                "parameters": self.metadata.parameters, "formulation": self.formulation, "provider": self.provider,
                "max_abs_error": self.max_abs_error, "relative_error": self.relative_error,
                "tolerance": self.tolerance, "reference_evaluator_error": self.reference_evaluator_error,
                "validation_slices": self.validation_slices, "seconds": self.seconds}


def resolve_formulation(requested: str, mask: SamplingMask) -> Formulation:
    """``"auto"``: ``"lines"`` when the mask is made of whole lines (along ``W`` preferred), else ``"dft"``.

    ``"lines"`` for a mask that is not whole lines raises :class:`InputError`.
    """
    if requested not in ("auto", *FORMULATIONS):
        raise InputError(f"unknown formulation {requested!r}; valid: auto, {', '.join(FORMULATIONS)}")
    axis = next((a for a in (-1, -2) if is_whole_lines(mask.values, a)), None)
    if requested == "auto":
        return Formulation("lines", axis) if axis is not None else Formulation("dft", None)
    if requested == "lines" and axis is None:
        raise InputError(f"the 'lines' formulation needs a mask of whole lines; mask {mask.digest()} is not")
    return Formulation(requested, axis if requested == "lines" else None)


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
    """Export ``graph`` with the dynamo exporter: inputs/outputs named as in :mod:`~compressor.export.runtime`,
    batch dynamic."""
    height, width = graph.image_size
    generator = torch.Generator().manual_seed(0)
    # Distinct tensors per input: torch.export would merge one tensor passed twice into a single graph input.
    kspace_real, kspace_imag = torch.randn(2, TRACE_BATCH, height, width, generator=generator)
    mask = torch.ones(height, width)
    batch = torch.export.Dim("batch")
    with quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            graph.eval(), (kspace_real, kspace_imag, mask), None, dynamo=True, opset_version=opset,
            input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
            dynamic_shapes=({0: batch}, {0: batch}, None), verbose=False,
        )
    return program.model_proto


def save_with_metadata(proto: onnx.ModelProto, path: Path, metadata: Mapping[str, str]) -> None:
    """Write ``proto`` to ``path`` as one self-contained file with ``metadata`` as ``metadata_props``."""
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(proto, str(path), save_as_external_data=False)


def phantom_kspace(mask: SamplingMask, count: int = 4) -> np.ndarray:
    """Validation k-space when no data is at hand: Shepp-Logan phantoms, shifted and scaled, ``(count, H, W)``.

    Used only when neither a run's validation slices nor a data file is given (the export says so).
    """
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    base = resize(shepp_logan_phantom(), mask.shape, anti_aliasing=True).astype(np.float32)
    images = np.stack([np.roll(base, (3 * i, -2 * i), axis=(0, 1)) * (1.0 + 0.5 * i) for i in range(count)])
    return simulated_kspace(images, mask.values)


def export_model(
    model: CascadeModel,
    out_path: str | Path,
    *,
    mask: SamplingMask,
    validation_kspace: np.ndarray,
    acceleration: float | None = None,
    config_key: str | None = None,
    extras: Mapping[str, Any] | None = None,
    formulation: str = "auto",
    provider: str = "auto",
    relative_tolerance: float = RELATIVE_TOLERANCE,
) -> ExportResult:
    """Export ``model`` with its DF layers to ``out_path`` and validate it; nothing is left behind on failure.

    Args:
        model: the trained model (any device; a CPU copy is exported, ``model`` is not modified).
        out_path: destination ``.onnx`` file (its folder is created).
        mask: the training mask; its shape is the graph's fixed image size and it is recorded in the metadata.
        validation_kspace: ``(S, H, W)`` complex, uncentred k-space undersampled with ``mask`` (real slices).
        acceleration: nominal acceleration to record (default: the mask's).
        config_key: the run's stage key to record.
        extras: further metadata (role, run name, ...).
        formulation: ``"auto"``, ``"lines"`` or ``"dft"`` (see :mod:`compressor.export.graph`).
        provider: ``"auto"``, ``"cpu"`` or ``"cuda"`` for the validation session.
        relative_tolerance: validation tolerance relative to the reference's max.

    Raises:
        export.validate.ExportValidationError: a check failed (the message lists every failure and by how much).
        InputError: bad arguments (formulation, validation data of the wrong shape).
    """
    started = time.perf_counter()
    out_path = Path(out_path)
    chosen = resolve_formulation(formulation, mask)
    if chosen.name not in EXPORTABLE_FORMULATIONS:
        raise InputError(f"formulation {chosen.name!r} is for benchmarks only; export uses "
                         f"{' or '.join(EXPORTABLE_FORMULATIONS)}")
    validation_kspace = np.asarray(validation_kspace)
    if validation_kspace.ndim != 3 or validation_kspace.shape[1:] != mask.shape or not len(validation_kspace):
        raise InputError(f"validation k-space must be (S, H, W) = (S, {mask.shape[0]}, {mask.shape[1]}) with S >= 1, "
                         f"got {validation_kspace.shape}")
    cpu_model = copy.deepcopy(model).cpu().eval()
    if not cpu_model.has_data_fidelity:
        raise InputError(f"{getattr(cpu_model, 'arch', type(cpu_model).__name__)} has no data-fidelity layers: only "
                         "k-space reconstruction models (e.g. dNcM, dcunetM) are exported")
    metadata = ExportMetadata(
        architecture=getattr(cpu_model, "arch", type(cpu_model).__name__), parameters=cpu_model.num_parameters(),
        image_size=mask.shape, acceleration=acceleration if acceleration is not None else mask.acceleration,
        mask=mask.values, mask_digest=mask.digest(), formulation=chosen.name, line_axis=chosen.line_axis,
        model_options=cpu_model.options.to_dict() if hasattr(cpu_model, "options") else {},
        config_key=config_key, tool_version=compressor.__version__,
        extras={"exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}", "opset": OPSET,
                **(extras or {})},
    )
    proto = trace_graph(ScannerGraph(cpu_model, mask.shape, chosen.name, chosen.line_axis))
    with atomic_path(out_path) as temporary:
        save_with_metadata(proto, temporary, metadata.to_properties())
        exported = open_exported(temporary, provider)
        report = validate_export(temporary, exported, cpu_model, validation_kspace, mask.values, relative_tolerance)
        report.raise_for_failures(out_path)
    return _result(out_path, report, exported.provider, chosen.name, time.perf_counter() - started,
                   len(validation_kspace), metadata)


def _result(path: Path, report: ValidationReport, provider: str, formulation: str, seconds: float, slices: int,
            metadata: ExportMetadata) -> ExportResult:
    image = report.comparison(f"ONNX Runtime ({provider})", "image")
    return ExportResult(path=path, max_abs_error=image.max_abs_error, relative_error=image.relative_error,
                        tolerance=image.tolerance,
                        reference_evaluator_error=report.comparison("onnx.reference", "image").max_abs_error,
                        provider=provider, formulation=formulation, seconds=seconds, validation_slices=slices,
                        metadata=metadata)


def export_run_model(run_model: RunModel, out_path: str | Path, *, formulation: str = "auto",
                     provider: str = "auto", validation_kspace: np.ndarray | None = None) -> ExportResult:
    """Export one trained model of a run, validated on the run's validation slices (else phantoms)."""
    if validation_kspace is None:
        validation_kspace = run_validation_kspace(run_model)
    if validation_kspace is None:
        validation_kspace = phantom_kspace(run_model.mask)
    info = run_model.info
    return export_model(run_model.model, out_path, mask=run_model.mask, validation_kspace=validation_kspace,
                        acceleration=info.get("acceleration"), config_key=info.get("key"),
                        extras={"name": run_model.name, "role": run_model.role, "method": info.get("method"),
                                "stage": info.get("stage")},
                        formulation=formulation, provider=provider)


def export_run(run_dir: str | Path, names: list[str] | None = None, *, formulation: str = "auto",
               provider: str = "auto", log: Callable[[str], None] = print) -> list[ExportResult]:
    """Export every trained model of ``run_dir`` (or those named) to ``<run>/exports/<name>.onnx`` and write
    ``<run>/exports/exports.json`` with each file's validation figures. Called at the end of ``compress``.
    Without ``names``, models without DF layers (the feature-domain ablation's) are skipped with a log line."""

    run_dir = Path(run_dir)
    results = []
    run_models = load_run_models(run_dir, names)
    image_to_image = [m.name for m in run_models if names is None and not m.model.has_data_fidelity]
    if image_to_image:
        log(f"not exported (no data-fidelity layers; the scanner graph takes k-space): {', '.join(image_to_image)}")
    for run_model in run_models:
        if run_model.name in image_to_image:
            continue
        result = export_run_model(run_model, run_dir / EXPORTS_FOLDER / run_model.file_name,
                                  formulation=formulation, provider=provider)
        log(f"exported {run_model.name} -> {result.path} ({result.formulation}, max abs error "
            f"{result.max_abs_error:.1e} <= {result.tolerance:.1e}, {result.provider})")
        results.append(result)
    save_json(run_dir / EXPORTS_FOLDER / "exports.json", [r.summary() for r in results])
    return results
