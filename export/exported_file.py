"""The exported ONNX file: what it holds besides the graph, written and read in this one module.

One self-contained ONNX model. Its graph takes :data:`INPUT_NAMES` (``kspace_real``, ``kspace_imag`` ``(B, H, W)``
float32, uncentred; ``mask`` ``(H, W)`` float32 0/1) and returns :func:`graph_outputs` of its image channels, in that
order; ``B`` is dynamic, ``H x W`` fixed at export. Its ``metadata_props``, one JSON value per key, are
:class:`ExportMetadata`, written by :func:`write_exported` and read by :func:`metadata_of`: nothing else touches them.

Versions (key ``format_version``): 1, files written before the metadata was typed (an INT8 layer records no reason),
and 2; another is refused in one line. Unknown keys are ignored; every key and JSON value of version 1 is written
again unchanged. Adding a key: a typed field on :class:`ExportMetadata` (a :class:`~compressor.json_record.JsonRecord`
for a JSON object), written by :meth:`~ExportMetadata.to_properties` and read by its ``from_properties``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from compressor import json_record
from compressor.errors import InputError, first_line
from compressor.json_record import JsonRecord, json_flat, json_key

FORMAT = "sft-kd-recon-onnx"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
INPUT_NAMES = ("kspace_real", "kspace_imag", "mask")
SCALE_OUTPUT = "scale"
NORMALISATION = ("the image outputs are in normalised units: x_u = F^-1(mask * kspace) (its real part for 1 image "
                 "channel, the complex image for 2), scale = max|x_u| per slice (>= 1e-12), inputs divided by scale; "
                 "image * scale is in the input's units")
KSPACE_CONVENTION = ("uncentred (DC at index (0, 0)), orthonormal 2-D FFT (norm='ortho'), real and imaginary parts as "
                     "separate float32 inputs (B, H, W); mask (H, W) float32 0/1, uncentred")
V1_INT8_REASON = "INT8 (a format-1 file records no reason for the layers it quantized)"


class Precision(StrEnum):
    """The precision of a file's convolutions: the one spelling of precision (``--precision`` takes these values)."""

    FP32 = "fp32"
    INT8 = "int8"
    FP16 = "fp16"

    def file_name(self, stem: str) -> str:
        """``stem.onnx`` for fp32, else ``stem.<precision>.onnx``."""
        return f"{stem}.onnx" if self is Precision.FP32 else f"{stem}.{self.value}.onnx"

    @property
    def target(self) -> str:
        """The export target that writes this precision's file: ``onnx-<precision>``."""
        return f"onnx-{self.value}"

    @classmethod
    def of_target(cls, name: str) -> Precision | None:
        """The precision whose :attr:`target` is ``name``; ``None`` for another target."""
        return next((precision for precision in cls if precision.target == name), None)

    @classmethod
    def parse(cls, text: str) -> list[Precision]:
        """``"fp32, int8,fp32"`` -> ``[FP32, INT8]`` (order kept, duplicates dropped); an unknown or empty list is an
        :class:`InputError` naming the valid precisions (sorted: ``fp16, fp32, int8``)."""
        names, valid = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip())), sorted(cls)
        unknown = [name for name in names if name not in valid]
        if unknown or not names:
            problem = f"unknown precision {unknown[0]!r}" if unknown else "no precision given"
            raise InputError(f"{problem}; valid: {', '.join(valid)} (comma-separated, e.g. fp32,int8)")
        return [cls(name) for name in names]


@dataclass(frozen=True)
class GraphOutputs:
    """A scanner graph's outputs (named only here): ``names`` in graph order, the image's parts ``(B, H, W)`` float32
    normalised, for 2 channels its magnitude, last ``scale`` ``(B,)``; ``image_names``, the image's parts."""

    names: tuple[str, ...]
    image_names: tuple[str, ...]

    def image(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The normalised image ``(B, H, W)`` from the named outputs: float32 for 1 channel, complex64 for 2."""
        if len(self.image_names) == 1:
            return outputs[self.image_names[0]]
        real, imag = (outputs[name] for name in self.image_names)
        return (real + 1j * imag).astype(np.complex64)


GRAPH_OUTPUTS: dict[int, GraphOutputs] = {  # by the model's image channels: 1 real, 2 complex (real and imaginary)
    1: GraphOutputs(("image", SCALE_OUTPUT), ("image",)),
    2: GraphOutputs(("image_real", "image_imag", "magnitude", SCALE_OUTPUT), ("image_real", "image_imag")),
}


def graph_outputs(image_channels: int) -> GraphOutputs:
    """The outputs of the graph of a model of ``image_channels`` (1 or 2)."""
    if image_channels not in GRAPH_OUTPUTS:
        raise ValueError(f"image channels must be one of {sorted(GRAPH_OUTPUTS)}, got {image_channels}")
    return GRAPH_OUTPUTS[image_channels]


@dataclass(frozen=True)
class ExporterRecord(JsonRecord):
    """The exporter (keys ``exporter``, e.g. ``"torch.onnx.export(dynamo=True), torch 2.13.0"``, and ``opset``)."""

    exporter: str
    opset: int


@dataclass(frozen=True)
class ModelOrigin(JsonRecord):
    """Where the exported weights come from: a run's model (keys ``name``, e.g. ``"sft_kd/at/d3c5@4x"``, ``role``,
    ``method``, ``null`` outside KD, and ``stage``, its folder) or a bare weights file (key ``weights``, its name)."""

    name: str | None = None
    role: str | None = None
    method: str | None = None
    stage: str | None = None
    weights: str | None = None

    def to_json(self) -> dict[str, Any]:
        run_model = {"name": self.name, "role": self.role, "method": self.method, "stage": self.stage}
        return run_model if self.weights is None else {"weights": self.weights}


@dataclass(frozen=True)
class Int8Settings(JsonRecord):
    """How ``quantize_static`` was called, and why: ONNX Runtime ``QuantType`` names of activations and weights,
    7-bit weights (``reduce_range``), per-channel scales, the format (``"QDQ"``, key ``format``), the rule applied."""

    activation_type: str
    weight_type: str
    reduce_range: bool
    per_channel: bool
    quant_format: str = json_key("format")
    reason: str


@dataclass(frozen=True)
class CalibrationRecord(JsonRecord):
    """The INT8 calibration: ONNX Runtime's ``method`` (``minmax``, ...), how many ``slices`` and their ``source``."""

    method: str
    slices: int
    source: str


@dataclass(frozen=True)
class LayerRecord(JsonRecord):
    """One convolution of an INT8 file: its ONNX ``node``, the model ``layer`` it computes (``"cascade 1 conv 2
    (32->1, grouped)"``), the PSNR cost of its block's INT8 convolutions quantized alone (dB; NaN if not measured),
    whether it is INT8 and why (key ``int8_because`` or ``kept_fp32_because``; a format-1 INT8 layer has none:
    :data:`V1_INT8_REASON`)."""

    node: str
    layer: str
    psnr_loss_alone_db: float
    int8: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        values = super().to_json()
        values["int8_because" if self.int8 else "kept_fp32_because"] = values.pop("reason")
        return values

    @classmethod
    def from_json(cls, value: Any, source: str | Path, key: str) -> LayerRecord:
        layer = json_record.json_fields(cls, value, source, key, skip={"reason"})
        because = "int8_because" if layer["int8"] else "kept_fp32_because"
        value = {because: V1_INT8_REASON, **value} if layer["int8"] else value
        return cls(**layer, reason=json_record.json_member(value, because, str, source, key))


QAT_OBJECTIVE = ("L1 to the fp32 model's own reconstruction (self-distillation), fake-quantized convolution weights "
                 "(per channel) and inputs (per tensor)")


@dataclass(frozen=True)
class QatRun(JsonRecord):
    """A quantization-aware fine-tuning (Adam, ``steps`` of ``batch`` slices): the L1 to the fp32 model's own
    reconstruction over the first and last ten steps, the PSNR loss (dB) of every INT8-able convolution in INT8
    after post-training quantization and after the fine-tuning, and whether the file is the fine-tuned one."""

    steps: int
    learning_rate: float
    batch: int
    l1_first: float = json_key("l1_to_fp32_first")
    l1_last: float = json_key("l1_to_fp32_last")
    ptq_psnr_loss: float = json_key("ptq_all_convolutions_psnr_loss_db")
    qat_psnr_loss: float = json_key("qat_all_convolutions_psnr_loss_db")
    used: bool
    objective: str = QAT_OBJECTIVE


@dataclass(frozen=True)
class QatRecord(JsonRecord):
    """The quantization-aware step of an INT8 export: ``threshold_db``, ``max_steps`` and the fine-tuning if one ran
    (its keys among these; ``{"run": false}`` when none did)."""

    threshold_db: float
    max_steps: int
    run: QatRun | None = json_flat(None)

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), **({} if self.run else {"run": False})}


@dataclass(frozen=True)
class Int8Record(JsonRecord):
    """How an INT8 file was made (key ``quantization``): the ``settings`` (their keys at the top of the object),
    ``calibration``, the PSNR-loss bound, every convolution's :class:`LayerRecord` in graph order, the graphs the
    sensitivity analysis measured, the quantization-aware fine-tuning."""

    settings: Int8Settings = json_flat()
    calibration: CalibrationRecord
    max_psnr_loss_db: float
    layers: tuple[LayerRecord, ...]
    graphs_measured: int
    qat: QatRecord

    @property
    def int8_nodes(self) -> list[str]:
        """The INT8 convolutions' nodes, in graph order (key ``int8_nodes``)."""
        return [layer.node for layer in self.layers if layer.int8]

    def to_json(self) -> dict[str, Any]:
        values = super().to_json()  # key int8_nodes after layers
        tail = {key: values.pop(key) for key in ("graphs_measured", "qat")}
        return {**values, "int8_nodes": self.int8_nodes, **tail}


@dataclass(frozen=True)
class Fp16Record(JsonRecord):
    """How an fp16 file was made (key ``fp16``): its fp16 nodes, PSNR-loss bound (dB) and what a CPU check checks."""

    fp16_nodes: tuple[str, ...]
    max_psnr_loss_db: float
    cpu_note: str


@dataclass(frozen=True)
class QualityRecord(JsonRecord):
    """A precision file's image quality minus its ``reference``'s (``"fp32 export"``; negative: a loss), ΔPSNR (dB)
    and ΔSSIM, on ``slices`` slices of ``source`` run by ``measured_on`` (a runtime's label; absent in older files)."""

    delta_psnr_db: float
    delta_ssim: float
    psnr_fp32_db: float
    slices: int
    reference: str
    measured_on: str | None
    source: str


@dataclass(frozen=True)
class CpuRecord(JsonRecord):
    """The CPU an INT8 file was made on: model, ``platform.machine()``, vector instruction sets, int8 dot product."""

    model: str
    machine: str
    instruction_sets: tuple[str, ...]
    int8_dot_product: bool


@dataclass(frozen=True)
class SpeedRecord(JsonRecord):
    """Whether INT8 pays on the CPU it was made on: batch-1 median latencies (ms) of the INT8 and fp32 files on ONNX
    Runtime, their ratio and verdict; where OpenVINO was installed, the INT8 file's on OpenVINO; ``verdict``: one
    line saying whether INT8 pays for this model on this CPU and, when it does not, why (from the CPU's instruction
    set, :func:`compressor.export.precision.speed.int8_verdict`; ``""`` in files written before it)."""

    int8_median_ms: float
    fp32_median_ms: float
    speedup: float
    runs: int
    batch: int
    pays: bool
    cpu: str
    openvino_int8_median_ms: float | None = None
    openvino_speedup: float | None = None
    openvino_pays: bool | None = None
    verdict: str = ""

    def to_json(self) -> dict[str, Any]:
        values = super().to_json()
        if not self.verdict:  # a file written before the verdict keeps its keys when rewritten
            del values["verdict"]
        return values


@dataclass(frozen=True, eq=False)
class ExportMetadata:
    """What an exported model records about itself (ONNX ``metadata_props``, every value JSON; each field under its
    own name as key unless said otherwise; the keys ``format``, ``format_version``, ``normalisation``,
    ``kspace_convention`` and ``outputs`` are fixed by the format). Equal when they write the same properties.

    Attributes:
        architecture, parameters: e.g. ``"d3c5"``, and the PyTorch model's trainable parameter count.
        image_size: ``(H, W)`` fixed at export; ``acceleration``: the nominal one trained for (``None``: unknown).
        mask: the training mask ``(H, W)`` float32, uncentred (used when the input brings none), written as
            ``{"shape": [H, W], "packbits": base64}`` (:func:`~compressor.json_record.encode_bits`); ``mask_digest``,
            its digest.
        formulation: the graph's DF formulation (``"lines"``, ``"dft"``: :mod:`compressor.export.graph.scanner_graph`);
            ``line_axis``: for ``"lines"``, the axis of the mask's lines (``-1`` whole columns, ``-2`` whole rows).
        model_options: the model's :class:`~compressor.models.ModelOptions` as its on-disk dict.
        config_key: the run's stage key (``stage.json`` ``key``), ``None`` for bare weights; ``tool_version``.
        exporter, origin: the exporter; the run model or weights file exported (their keys at the top level).
        precision: the convolutions' precision (absent in files older than precisions: fp32).
        precision_method, quantization, fp16, quality (key ``precision_quality``), cpu, int8_speed: how a non-fp32
            file was made and what it costs.
        image_channels: they fix the graph's outputs (:func:`graph_outputs`); absent in older files: 1.
        inputs: the graph's inputs (:data:`INPUT_NAMES`; a served model has its mask folded in).
    """

    architecture: str
    parameters: int
    image_size: tuple[int, int]
    acceleration: float | None
    mask: np.ndarray
    mask_digest: str
    formulation: str
    line_axis: int | None
    model_options: dict[str, Any]
    config_key: str | None
    tool_version: str
    exporter: ExporterRecord | None = json_flat(None)
    origin: ModelOrigin | None = json_flat(None)
    precision: Precision = Precision.FP32
    precision_method: str | None = None
    quantization: Int8Record | None = None
    fp16: Fp16Record | None = None
    quality: QualityRecord | None = json_key("precision_quality", None)
    cpu: CpuRecord | None = None
    int8_speed: SpeedRecord | None = None
    image_channels: int = 1
    inputs: tuple[str, ...] = INPUT_NAMES

    RECORDS: ClassVar[tuple[str, ...]] = ("precision_method", "quantization", "fp16", "quality", "cpu", "int8_speed")
    """The optional fields written after ``precision`` and the origin, in this order, each under its key."""

    @property
    def outputs(self) -> GraphOutputs:
        """The outputs of this model's graph."""
        return graph_outputs(self.image_channels)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExportMetadata) and self.to_properties() == other.to_properties()

    def to_properties(self) -> dict[str, str]:
        """The ``metadata_props`` key/value strings (values are JSON; NaN written as ``NaN``)."""
        values: dict[str, Any] = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "architecture": self.architecture,
            "parameters": self.parameters, "image_size": list(self.image_size), "acceleration": self.acceleration,
            "mask": json_record.encode_bits(self.mask), "mask_digest": self.mask_digest,
            "formulation": self.formulation, "line_axis": self.line_axis, "model_options": self.model_options,
            "config_key": self.config_key, "tool_version": self.tool_version, "image_channels": self.image_channels,
            "normalisation": NORMALISATION, "kspace_convention": KSPACE_CONVENTION, "inputs": list(self.inputs),
            "outputs": list(self.outputs.names),
            **(self.exporter.to_json() if self.exporter else {}), "precision": self.precision.value,
            **(self.origin.to_json() if self.origin else {}),
        }
        records = {item.metadata.get("json", item.name): getattr(self, item.name) for item in fields(self)
                   if item.name in self.RECORDS}
        values.update({key: json_record.to_json_value(value) for key, value in records.items() if value is not None})
        return {key: json.dumps(value) for key, value in values.items()}

    @classmethod
    def from_properties(cls, properties: Mapping[str, str], source: str | Path = "model") -> ExportMetadata:
        """Parse ``metadata_props`` of format version 1 or 2; a foreign model, another version or a malformed value
        is an :class:`InputError` naming ``source`` (and the key)."""
        values = json_record.json_values(properties, "unreadable model metadata", source)
        if values.get("format") != FORMAT:
            raise InputError(f"not exported by this tool (no {FORMAT!r} metadata); re-export it with "
                             "'compress export'", source)
        json_record.check_version(values.get("format_version"), READABLE_VERSIONS, "exported-file format version",
                                  "re-export it with 'compress export'", source)
        missing = [item.name for item in fields(cls) if item.default is MISSING and item.name not in values]
        if missing:
            raise InputError(f"model metadata lacks {', '.join(missing)}", source)
        if values.get("image_channels", 1) not in GRAPH_OUTPUTS:  # absent in files older than complex models
            raise InputError(f"model metadata has image_channels {values['image_channels']!r}; known: "
                             f"{', '.join(map(str, GRAPH_OUTPUTS))}", source)
        return cls(**json_record.json_fields(cls, values, source, ""))


def metadata_properties(proto: Any) -> dict[str, str]:
    """The raw ``metadata_props`` of an ONNX ``ModelProto`` (any file's, this tool's or not), ``{key: JSON text}``."""
    return {entry.key: entry.value for entry in proto.metadata_props}


def set_metadata(proto: Any, metadata: ExportMetadata) -> None:
    """Replace the ``metadata_props`` of the ONNX ``ModelProto`` ``proto`` by ``metadata``'s (in memory)."""
    del proto.metadata_props[:]
    for key, value in metadata.to_properties().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def write_exported(proto: Any, path: str | Path, metadata: ExportMetadata) -> None:
    """Write the ONNX ``ModelProto`` ``proto`` to ``path`` as one self-contained file recording ``metadata``."""
    import onnx

    set_metadata(proto, metadata)
    onnx.save_model(proto, str(path), save_as_external_data=False)


def metadata_of(model: Any, source: str | Path = "model") -> ExportMetadata:
    """The :class:`ExportMetadata` an ONNX ``ModelProto`` or the file an ``onnxruntime.InferenceSession`` runs
    records (``source`` names it in errors)."""
    session = hasattr(model, "get_modelmeta")
    properties = model.get_modelmeta().custom_metadata_map if session else metadata_properties(model)
    return ExportMetadata.from_properties(properties, source)


def load_exported(path: str | Path) -> Any:
    """The ONNX ``ModelProto`` of the file ``path``; not a readable ONNX file: :class:`InputError`."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError) as error:
        raise InputError(f"not a loadable ONNX model ({first_line(error)})", path) from None


def read_exported_metadata(path: str | Path) -> ExportMetadata:
    """The :class:`ExportMetadata` of the exported file ``path``; unreadable or foreign: :class:`InputError`."""
    return metadata_of(load_exported(path), path)
