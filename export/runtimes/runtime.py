"""Scanner-side runtime: ONNX Runtime execution providers, OpenVINO, sessions, and the metadata an exported model
carries.

Everything here needs only ``onnxruntime`` and ``numpy`` (no PyTorch), as on a scanner; ``onnx`` builds the
one-node model of the CUDA probe and reads the metadata of a file OpenVINO runs.

Providers: every runtime the tool may use is registered in :data:`EXECUTION_PROVIDERS`, one line each (the
``--provider`` choices of the CLI come from it, plus ``auto``): ONNX Runtime's execution providers
(:class:`ExecutionProvider`) and OpenVINO's CPU runtime (:class:`OpenVINORuntime`), which runs the same ONNX file
behind the same ``run(output_names, feed)`` call (:class:`Session`). ``onnxruntime-gpu`` lists
``CUDAExecutionProvider`` as available even where CUDA cannot run (no GPU, missing CUDA libraries); ONNX Runtime then
quietly builds a CPU session. A provider registered with ``probed=True`` is therefore probed by building a session on
a one-node model and checking that it is really the active provider (:func:`provider_usable`). A CUDA session is
created with ``session.disable_cpu_ep_fallback = 1``, so a node without a CUDA kernel is an error at session
creation instead of a silent CPU fallback, and :func:`node_providers` reads from a profile which provider
ran each node.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import json
import queue
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from compressor.errors import InputError, first_line
from compressor.registry import Registry

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
OPENVINO = "OpenVINO-CPU"
AUTO_PROVIDER = "auto"
ORT_DEFAULT_SEVERITY = 2
ORT_SILENT_SEVERITY = 4

FORMAT = "sft-kd-recon-onnx"
FORMAT_VERSION = 1
INPUT_NAMES = ("kspace_real", "kspace_imag", "mask")
NORMALISATION = (
    "the image outputs are in normalised units: x_u = F^-1(mask * kspace) (its real part for 1 image channel, the "
    "complex image for 2), scale = max|x_u| per slice (>= 1e-12), inputs divided by scale; image * scale is in the "
    "input's units"
)
KSPACE_CONVENTION = (
    "uncentred (DC at index (0, 0)), orthonormal 2-D FFT (norm='ortho'), real and imaginary parts as separate "
    "float32 inputs (B, H, W); mask (H, W) float32 0/1, uncentred"
)


@dataclass(frozen=True)
class GraphOutputs:
    """The outputs of a scanner graph of one image channel count, in graph order (the one place they are named).

    Attributes:
        names: every output: the image's parts ``(B, H, W)`` float32 in normalised units, then for 2 channels its
            magnitude ``(B, H, W)``, last ``scale`` ``(B,)``.
        image_names: the outputs that make up the image: ``("image",)`` (real) or ``("image_real", "image_imag")``.
    """

    names: tuple[str, ...]
    image_names: tuple[str, ...]

    def image(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The normalised image ``(B, H, W)`` from the named outputs: float32 for 1 channel, complex64 for 2."""
        if len(self.image_names) == 1:
            return outputs[self.image_names[0]]
        real, imag = (outputs[name] for name in self.image_names)
        return (real + 1j * imag).astype(np.complex64)


SCALE_OUTPUT = "scale"
GRAPH_OUTPUTS: dict[int, GraphOutputs] = {
    1: GraphOutputs(("image", SCALE_OUTPUT), ("image",)),
    2: GraphOutputs(("image_real", "image_imag", "magnitude", SCALE_OUTPUT), ("image_real", "image_imag")),
}
"""The graph's outputs by the model's image channels (1 real, 2 complex as real and imaginary parts)."""


def graph_outputs(image_channels: int) -> GraphOutputs:
    """The outputs of the graph of a model of ``image_channels`` (1 or 2)."""
    if image_channels not in GRAPH_OUTPUTS:
        raise ValueError(f"image channels must be one of {sorted(GRAPH_OUTPUTS)}, got {image_channels}")
    return GRAPH_OUTPUTS[image_channels]


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """A 0/1 ``(H, W)`` mask as ``{"shape": [H, W], "packbits": base64}`` (JSON-ready, 1 bit per sample)."""
    bits = np.packbits(np.asarray(mask) != 0, axis=None)
    return {"shape": [int(n) for n in mask.shape], "packbits": base64.b64encode(bits.tobytes()).decode("ascii")}


def decode_mask(encoded: dict[str, Any]) -> np.ndarray:
    """The float32 ``(H, W)`` mask written by :func:`encode_mask`."""
    shape = tuple(int(n) for n in encoded["shape"])
    bits = np.frombuffer(base64.b64decode(encoded["packbits"]), dtype=np.uint8)
    return np.unpackbits(bits, count=shape[0] * shape[1]).reshape(shape).astype(np.float32)


@dataclass(frozen=True, eq=False)
class ExportMetadata:
    """What an exported model records about itself (ONNX ``metadata_props``, every value JSON-encoded).

    Attributes:
        architecture: e.g. ``"d3c5"``.
        parameters: trainable parameter count of the PyTorch model.
        image_size: ``(H, W)`` fixed at export.
        acceleration: the nominal acceleration the model was trained for (``None`` if unknown).
        mask: the training mask ``(H, W)`` float32, uncentred (used when the input brings no mask).
        mask_digest: :meth:`compressor.masks.SamplingMask.digest` of that mask.
        formulation: the DF formulation in the graph (``"lines"`` or ``"dft"``, see
        :mod:`compressor.export.graph.scanner_graph`).
        line_axis: for ``"lines"``, the axis of the mask's lines (``-1`` whole columns, ``-2`` whole rows).
        model_options: the model's :class:`~compressor.models.ModelOptions` as a dict.
        config_key: the run's stage key (``stage.json`` ``key``), ``None`` for a bare weights file.
        tool_version: version of this tool at export.
        extras: further string-keyed facts (role, run name, exporter, opset, ...).
        image_channels: the model's image channels, which fix the graph's outputs (:func:`graph_outputs`); a file
            exported before 2-channel models existed records none and means 1.
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
    extras: dict[str, Any] = field(default_factory=dict)
    image_channels: int = 1

    @property
    def outputs(self) -> GraphOutputs:
        """The outputs of this model's graph."""
        return graph_outputs(self.image_channels)

    def to_properties(self) -> dict[str, str]:
        """The ``metadata_props`` key/value strings (values are JSON)."""
        values = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "architecture": self.architecture,
            "parameters": self.parameters,
            "image_size": list(self.image_size),
            "acceleration": self.acceleration,
            "mask": encode_mask(self.mask),
            "mask_digest": self.mask_digest,
            "formulation": self.formulation,
            "line_axis": self.line_axis,
            "model_options": self.model_options,
            "config_key": self.config_key,
            "tool_version": self.tool_version,
            "image_channels": self.image_channels,
            "normalisation": NORMALISATION,
            "kspace_convention": KSPACE_CONVENTION,
            "inputs": list(INPUT_NAMES),
            "outputs": list(self.outputs.names),
        }
        clashes = sorted(set(self.extras) & set(values))
        if clashes:
            raise ValueError(f"metadata extras may not redefine {clashes}")
        return {key: json.dumps(value) for key, value in {**values, **self.extras}.items()}

    @classmethod
    def from_properties(cls, properties: dict[str, str], source: str | Path = "model") -> ExportMetadata:
        """Parse ``metadata_props``; a model not exported by this tool raises :class:`InputError`."""
        try:
            values = {key: json.loads(text) for key, text in properties.items()}
        except json.JSONDecodeError as error:
            raise InputError(f"unreadable model metadata ({error})", source) from None
        if values.get("format") != FORMAT:
            raise InputError(f"not exported by this tool (no {FORMAT!r} metadata); re-export it with "
                             "'compress export'", source)
        if values.get("format_version") != FORMAT_VERSION:
            raise InputError(f"metadata format version {values.get('format_version')} is not {FORMAT_VERSION}", source)
        known = {"format", "format_version", "normalisation", "kspace_convention", "inputs", "outputs",
                 "image_channels"}
        fields_ = {"architecture", "parameters", "image_size", "acceleration", "mask", "mask_digest", "formulation",
                   "line_axis", "model_options", "config_key", "tool_version"}
        missing = sorted(fields_ - set(values))
        if missing:
            raise InputError(f"model metadata lacks {', '.join(missing)}", source)
        image_channels = values.get("image_channels", 1)  # files exported before complex models: real images
        if image_channels not in GRAPH_OUTPUTS:
            raise InputError(f"model metadata has image_channels {image_channels!r}; known: "
                             f"{', '.join(map(str, GRAPH_OUTPUTS))}", source)
        return cls(
            architecture=values["architecture"],
            parameters=int(values["parameters"]),
            image_size=(int(values["image_size"][0]), int(values["image_size"][1])),
            acceleration=values["acceleration"],
            mask=decode_mask(values["mask"]),
            mask_digest=values["mask_digest"],
            formulation=values["formulation"],
            line_axis=values["line_axis"],
            model_options=values["model_options"],
            config_key=values["config_key"],
            tool_version=values["tool_version"],
            extras={key: value for key, value in values.items() if key not in known | fields_},
            image_channels=image_channels,
        )


def _probe_model() -> bytes:
    """A one-node ONNX model (``y = x + x``), serialised, for provider probes."""
    from onnx import TensorProto, helper

    tensor = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "probe",
                              [tensor("x", TensorProto.FLOAT, [1])], [tensor("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@functools.cache
def provider_usable(ort_name: str, probed: bool = True) -> bool:
    """Whether ONNX Runtime can really run ``ort_name`` here: listed as available and, when ``probed``, a one-node
    session built on it alone runs on it (probed once per process, load errors silenced)."""
    if ort_name not in ort.get_available_providers():
        return False
    if not probed:
        return True
    ort.set_default_logger_severity(ORT_SILENT_SEVERITY)
    try:
        session = ort.InferenceSession(_probe_model(), providers=[ort_name])
        return session.get_providers()[0] == ort_name
    except Exception:  # any failure to build a session means "not usable"
        return False
    finally:
        ort.set_default_logger_severity(ORT_DEFAULT_SEVERITY)


class Session(Protocol):
    """What the tool asks of an inference session: ONNX Runtime's ``InferenceSession.run``."""

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs ``output_names`` (``None``: all, in graph order) for the named inputs."""
        ...


LOAD_ERRORS = tuple(
    getattr(ort.capi.onnxruntime_pybind11_state, name)
    for name in ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile", "NotImplemented",
                 "RuntimeException")
)
"""What ONNX Runtime raises for a file it cannot turn into a session."""


@dataclass(frozen=True)
class ExecutionProvider:
    """An ONNX Runtime execution provider the tool can validate, reconstruct and benchmark on.

    Attributes:
        ort_name: ONNX Runtime's name, e.g. ``"CPUExecutionProvider"``; the name :func:`choose_provider` returns.
        preference: ``auto`` picks the usable provider of highest preference.
        probed: whether availability must be proven by a session (providers that list themselves where they
            cannot run, as CUDA does).
        unusable: why it may not run, for the error message when it was asked for and cannot.
    """

    ort_name: str
    preference: int
    probed: bool = False
    unusable: str = ""

    @property
    def name(self) -> str:
        return self.ort_name

    @property
    def label(self) -> str:
        """The runtime and provider in words, as reports name them."""
        return f"ONNX Runtime ({self.ort_name})"

    @property
    def title(self) -> str:
        return f"the {self.ort_name.removesuffix('ExecutionProvider')} execution provider"

    def usable(self) -> bool:
        return provider_usable(self.ort_name, self.probed)

    def session(self, model: str | Path | bytes, threads: int | None = None,
                spinning: bool = False) -> ort.InferenceSession:
        """A session that runs on exactly this provider (an error otherwise, never a silent fallback)."""
        source = model if isinstance(model, bytes) else str(model)
        session = ort.InferenceSession(source, session_options(self.ort_name, threads, spinning),
                                       providers=[self.ort_name])
        active = session.get_providers()[0]
        if active != self.ort_name:
            raise RuntimeError(f"ONNX Runtime built a {active} session where {self.ort_name} was asked for")
        return session

    def open(self, path: Path, threads: int | None) -> tuple[Session, ExportMetadata]:
        """A session on the file ``path`` and its metadata; an unloadable or foreign file raises :class:`InputError`."""
        try:
            session = self.session(path, threads)
        except LOAD_ERRORS as error:
            raise InputError(f"not a loadable ONNX model ({first_line(error)})", path) from None
        return session, ExportMetadata.from_properties(session.get_modelmeta().custom_metadata_map, path)

    def node_providers(self, model: Path, feed: Mapping[str, np.ndarray]) -> dict[str, str]:
        """Run ``model`` once with profiling and return ``{node name: provider that ran it}``."""
        with tempfile.TemporaryDirectory() as folder:
            options = session_options(self.ort_name, profile_prefix=str(Path(folder) / "profile"))
            session = ort.InferenceSession(str(model), options, providers=[self.ort_name])
            session.run(None, dict(feed))
            events = json.loads(Path(session.end_profiling()).read_text())
        return {
            event["name"].removesuffix("_kernel_time"): event["args"]["provider"]
            for event in events
            if event.get("cat") == "Node" and "provider" in event.get("args", {})
        }


@functools.cache
def openvino_cpu_usable() -> bool:
    """Whether OpenVINO is installed, imports and lists its CPU device (checked once per process)."""
    if importlib.util.find_spec("openvino") is None:
        return False
    try:
        import openvino

        return "CPU" in openvino.Core().available_devices
    except Exception:  # a broken installation (missing shared libraries, ...) means "not usable"
        return False


def openvino_error(error: BaseException) -> str:
    """The informative line of an OpenVINO exception: its last non-empty line (the first ones name source files)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


class OpenVINOSession:
    """An OpenVINO compiled model behind ONNX Runtime's ``run(output_names, feed)`` call.

    One infer request must not run two inferences at once, so each call takes an idle request from a pool (or makes
    one): calls from several threads, as the streaming server makes, are safe. Outputs are copies
    (``share_outputs=False``), so a later call cannot overwrite what an earlier one returned.
    """

    def __init__(self, compiled: Any):
        self._compiled = compiled
        # every name of every output: get_any_name() may return a tensor name the graph does not declare as output
        self._outputs = {name: output for output in compiled.outputs for name in output.get_names()}
        self._output_order = [output.get_any_name() for output in compiled.outputs]
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self._compiled.create_infer_request()
        try:
            results = request.infer(dict(input_feed), share_outputs=False)
            return [np.asarray(results[self._outputs[name]]) for name in (output_names or self._output_order)]
        finally:
            self._idle.put(request)


@dataclass(frozen=True)
class OpenVINORuntime:
    """OpenVINO's own CPU runtime (``pip install openvino``), not an ONNX Runtime provider: it compiles the ONNX file
    with its ONNX front end and runs a QDQ INT8 file with int8 kernels.

    It is offered because on an AVX2 CPU without VNNI it ran this tool's INT8 files in 0.81-0.92x ONNX Runtime's
    time (``benchmarks/results/precision.md``); its fp32 was mostly 1.06-1.25x slower there, so ``auto`` never picks
    it.
    Inference precision is pinned to f32: on a CPU with bf16 units OpenVINO would otherwise compute an fp32 file's
    convolutions in bf16, and the validation against PyTorch would not hold for what runs.
    """

    preference: int = -1
    unusable: str = "OpenVINO is not installed (pip install openvino) or has no CPU device"

    @property
    def name(self) -> str:
        return OPENVINO

    @property
    def label(self) -> str:
        import openvino

        return f"OpenVINO {openvino.get_version().split('-')[0]} (CPU)"

    @property
    def title(self) -> str:
        return "OpenVINO"

    def usable(self) -> bool:
        return openvino_cpu_usable()

    def session(self, model: str | Path | bytes, threads: int | None = None, spinning: bool = False) -> Session:
        """A compiled model on OpenVINO's CPU device. ``threads`` per inference, as ONNX Runtime's intra-op threads:
        ``None`` is the latency hint (one stream, the whole CPU on one inference, calls from several threads take
        turns); a number gives ``cores // threads`` streams of that many threads, so that as many calls run at once
        as the streaming server runs (:class:`OpenVINOSession` gives each its own request). ``spinning`` has no
        OpenVINO counterpart and is ignored."""
        import os

        import openvino

        core = openvino.Core()
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads is None:
            config["PERFORMANCE_HINT"] = "LATENCY"
        else:
            streams = max(1, (os.cpu_count() or 1) // int(threads))
            config.update({"NUM_STREAMS": streams, "INFERENCE_NUM_THREADS": streams * int(threads)})
        return OpenVINOSession(core.compile_model(core.read_model(model if isinstance(model, bytes) else str(model)),
                                                  "CPU", config))

    def open(self, path: Path, threads: int | None) -> tuple[Session, ExportMetadata]:
        """A session on the file ``path`` and its metadata. The file is parsed as ONNX and its metadata read first:
        OpenVINO would try its other front ends on a corrupt file and report theirs, and a foreign file is refused as
        such before it is compiled. Unloadable or foreign: :class:`InputError`."""
        import onnx
        from google.protobuf.message import DecodeError

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except (DecodeError, OSError, ValueError) as error:
            raise InputError(f"not a loadable ONNX model ({first_line(error)})", path) from None
        metadata = ExportMetadata.from_properties({entry.key: entry.value for entry in proto.metadata_props}, path)
        try:
            session = self.session(proto.SerializeToString(), threads)
        except RuntimeError as error:
            raise InputError(f"OpenVINO cannot compile it ({openvino_error(error)})", path) from None
        return session, metadata

    def node_providers(self, model: Path, feed: Mapping[str, np.ndarray]) -> dict[str, str]:
        """Every node on OpenVINO's CPU device: it compiles the whole graph for one device or refuses it, so there is
        no per-node fallback to find, and :meth:`open` has compiled the file already (``feed`` is not needed)."""
        import onnx

        return {node.name: OPENVINO for node in onnx.load(str(model)).graph.node}


Runtime = ExecutionProvider | OpenVINORuntime
"""A registered way to run an exported file: :attr:`name`, :attr:`label`, :attr:`title`, :meth:`usable`,
:meth:`session`, :meth:`open`, :meth:`node_providers`."""

EXECUTION_PROVIDERS: Registry[Runtime] = Registry("execution provider")
EXECUTION_PROVIDERS.register("cpu")(ExecutionProvider(CPU, preference=0))
EXECUTION_PROVIDERS.register("cuda")(ExecutionProvider(CUDA, preference=1, probed=True,
                                                       unusable="no GPU or CUDA libraries missing"))
EXECUTION_PROVIDERS.register("openvino")(OpenVINORuntime())


def provider_choices() -> list[str]:
    """``auto`` and every registered provider: the CLI's ``--provider`` choices."""
    return [AUTO_PROVIDER, *EXECUTION_PROVIDERS.names()]


def runtime_named(name: str) -> Runtime:
    """The registered runtime whose :attr:`name` (what :func:`choose_provider` returns, e.g.
    ``"CPUExecutionProvider"``, not a ``--provider`` choice such as ``"cpu"``) is ``name``."""
    for key in EXECUTION_PROVIDERS:
        if EXECUTION_PROVIDERS.get(key).name == name:
            return EXECUTION_PROVIDERS.get(key)
    raise ValueError(f"no registered runtime is named {name!r}")


def runtime_label(name: str) -> str:
    """The runtime ``name`` (what :func:`choose_provider` returns) in words, e.g. ``ONNX Runtime
    (CPUExecutionProvider)``."""
    return runtime_named(name).label


def choose_provider(requested: str = AUTO_PROVIDER) -> str:
    """The name of the runtime to use: for ``"auto"`` the usable registered runtime of highest preference (CUDA when
    really usable, else ONNX Runtime's CPU provider); for a registered name, that runtime, which must be usable."""
    if requested not in provider_choices():
        raise InputError(f"unknown provider {requested!r}; valid: {', '.join(provider_choices())}")
    if requested == AUTO_PROVIDER:
        ranked = sorted((EXECUTION_PROVIDERS.get(name) for name in EXECUTION_PROVIDERS), key=lambda p: -p.preference)
        return next(provider.name for provider in ranked if provider.usable())
    provider = EXECUTION_PROVIDERS.get(requested)
    if not provider.usable():
        reason = f" ({provider.unusable})" if provider.unusable else ""
        raise InputError(f"{provider.title} was asked for but cannot run here{reason}; use --provider cpu")
    return provider.name


def require_onnxruntime(name: str, what: str) -> ExecutionProvider:
    """The ONNX Runtime provider ``name``; for another runtime an :class:`InputError` saying that ``what`` needs
    ONNX Runtime (its profiler, or a comparison against it)."""
    runtime = runtime_named(name)
    if not isinstance(runtime, ExecutionProvider):
        raise InputError(f"{what} runs on ONNX Runtime only, not on {runtime.title}; choose --provider cpu or cuda")
    return runtime


def session_options(provider: str, threads: int | None = None, spinning: bool = False,
                    profile_prefix: str | None = None) -> ort.SessionOptions:
    """Options for an ONNX Runtime session on ``provider``: ``threads`` intra-op threads (``None``: ONNX Runtime's
    default), thread spinning off unless asked (fair timing, no busy CPU between calls), no CPU fallback for CUDA."""
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if provider == CUDA:
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


def create_session(model: str | Path | bytes, provider: str = CPU, threads: int | None = None,
                   spinning: bool = False) -> Session:
    """A session on the runtime named ``provider`` (:func:`choose_provider`'s names) that runs on exactly it."""
    return runtime_named(provider).session(model, threads, spinning)


def node_providers(model: str | Path, provider: str, feed: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Run ``model`` once on the runtime named ``provider`` and return ``{node name: provider that ran it}``."""
    return runtime_named(provider).node_providers(Path(model), feed)


def graph_feed(kspace: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's inputs for complex uncentred k-space ``(B, H, W)`` and a 0/1 mask ``(H, W)``."""
    return {
        "kspace_real": np.ascontiguousarray(kspace.real, dtype=np.float32),
        "kspace_imag": np.ascontiguousarray(kspace.imag, dtype=np.float32),
        "mask": np.ascontiguousarray(mask, dtype=np.float32),
    }


@dataclass
class ExportedModel:
    """An exported model opened for inference: its session, the runtime that runs it (:func:`choose_provider`'s
    name), its metadata and the inference threads asked for (``None``: the runtime's default, all cores)."""

    path: Path
    session: Session
    provider: str
    metadata: ExportMetadata
    threads: int | None = None

    @property
    def runtime(self) -> str:
        """The runtime in words (:func:`runtime_label`)."""
        return runtime_label(self.provider)

    def run_outputs(self, kspace: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the graph by name (:attr:`ExportMetadata.outputs`) for complex uncentred k-space
        ``(B, H, W)`` and ``mask`` ``(H, W)``."""
        names = list(self.metadata.outputs.names)
        return dict(zip(names, self.session.run(names, graph_feed(kspace, mask)), strict=True))

    def run(self, kspace: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reconstruct complex uncentred k-space ``(B, H, W)`` with ``mask`` ``(H, W)``.

        Returns ``(image (B, H, W) normalised, scale (B,))``; the image is float32 for a 1-channel model, complex64
        for a 2-channel one; ``image * scale[:, None, None]`` is in input units.
        """
        outputs = self.run_outputs(kspace, mask)
        return self.metadata.outputs.image(outputs), outputs[SCALE_OUTPUT]


def open_exported(path: str | Path, provider: str = "auto", threads: int | None = None) -> ExportedModel:
    """Open an exported model; a missing, corrupt or foreign file raises :class:`InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError("model file not found", path)
    chosen = choose_provider(provider)
    session, metadata = runtime_named(chosen).open(path, threads)
    return ExportedModel(path, session, chosen, metadata, threads)
