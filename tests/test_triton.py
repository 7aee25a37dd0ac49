"""The Triton Inference Server model repository of ``compress export --triton-repo``: layout, config.pbtxt against
Triton's own ``ModelConfig`` and the ONNX graph, the folded mask, names, options, existing entries; the serving
repository seam (another format is one class over the shared writer).

Tiny models (d2c2, 8 channels) on 16x12 images (non-square, so that H and W cannot be swapped unseen), 1 and 2
image channels. No Triton server runs here: the configs are checked by parsing them with ``tritonclient``'s
``model_config_pb2.ModelConfig`` and comparing them with the graph, the model files by running them with ONNX Runtime.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from compressor.cli.export_command import export_command
from compressor.errors import InputError
from compressor.export.exported_file import read_exported_metadata
from compressor.export.run_models import simulated_kspace
from compressor.export.runtimes import RUNTIMES, open_exported
from compressor.export.serving import (
    SERVING_REPOSITORIES,
    RepositoryFormat,
    ServedExport,
    TritonOptions,
    TritonRepository,
)
from compressor.export.serving.triton import triton_model_name, write_triton_repository
from compressor.export.serving.triton_config import Keyword, to_text_format
from compressor.export.targets.export import export_model, phantom_kspace
from compressor.masks import make_mask
from compressor.models import ModelOptions, build_model
from tests.test_export import tiny_model, write_run

SIZE = (16, 12)
NAMES = {1: "sft_kd/at/d2c2@4x", 2: "sft_kd/at/d2c2@4x/complex"}
ENTRIES = {1: "sft_kd-at-d2c2-4x", 2: "sft_kd-at-d2c2-4x-complex"}
OUTPUTS = {1: ("image", "scale"), 2: ("image_real", "image_imag", "magnitude", "scale")}


@pytest.fixture(scope="module")
def mask():
    return make_mask("random", 4, SIZE, seed=1)


@pytest.fixture(scope="module")
def exports(tmp_path_factory, mask) -> dict[int, Path]:
    """A 1-channel and a 2-channel tiny model exported (fp32, validated on one phantom slice)."""
    folder = tmp_path_factory.mktemp("exports")
    paths = {}
    for channels in (1, 2):
        model = build_model("d2c2", ModelOptions(width=8, image_channels=channels)).eval()
        paths[channels] = export_model(model, folder / f"tiny{channels}.onnx", mask=mask,
                                       validation_kspace=phantom_kspace(mask, 1, image_channels=channels)).path
    return paths


@pytest.fixture(scope="module")
def repository(tmp_path_factory, exports) -> Path:
    """Both exports served from one repository with the default options."""
    folder = tmp_path_factory.mktemp("triton") / "repo"
    entries = write_triton_repository([ServedExport(NAMES[c], exports[c]) for c in (1, 2)], folder, provider="cpu")
    assert [(e.name, e.action, e.precision) for e in entries] == [(ENTRIES[1], "written", "fp32"),
                                                                   (ENTRIES[2], "written", "fp32")]
    return folder


def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    """config.pbtxt as Triton reads it (an unknown field or a malformed line raises ParseError)."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- names and text format -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "precision", "expected"), [
    ("sft_kd/at/d3c5@4x", "fp32", "sft_kd-at-d3c5-4x"),
    ("sft_kd/at/d3c5@4x", "int8", "sft_kd-at-d3c5-4x-int8"),
    ("teacher/d5c5@2.5x", "fp16", "teacher-d5c5-2.5x-fp16"),
    ("/weights file (copy)/", "fp32", "weights-file-copy"),
])
def test_model_names_are_safe_folder_names_with_the_precision_appended(name, precision, expected):
    assert triton_model_name(name, precision) == expected


def test_a_name_without_letters_or_digits_is_refused():
    with pytest.raises(InputError, match="no letters or digits"):
        triton_model_name("@/@")


def test_text_format_writes_messages_repeated_fields_enums_and_quoted_strings():
    fields = {"name": 'a "b"', "max_batch_size": 4,
              "input": [{"dims": [16, 12]}, {"dims": [1], "reshape": {"shape": []}}],
              "instance_group": [{"kind": Keyword("KIND_CPU")}], "model_warmup": {"inputs": {"random_data": True}}}
    assert to_text_format(fields) == "\n".join([
        'name: "a \\"b\\""', "max_batch_size: 4",
        "input {", "  dims: [16, 12]", "}", "input {", "  dims: [1]", "  reshape {", "    shape: []", "  }", "}",
        "instance_group {", "  kind: KIND_CPU", "}",
        "model_warmup {", "  inputs {", "    random_data: true", "  }", "}"])


# --- config.pbtxt against Triton's ModelConfig and the graph ------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 2])
def test_config_parses_as_triton_model_config_and_declares_the_graphs_io(repository, channels):
    entry = repository / ENTRIES[channels]
    assert sorted(snapshot(entry)) == ["1/model.onnx", "config.pbtxt"]
    config = parse_config(entry / "config.pbtxt")
    graph = onnx.load(str(entry / "1" / "model.onnx")).graph
    fp32 = model_config_pb2.DataType.Value("TYPE_FP32")

    assert (config.name, config.backend, config.max_batch_size) == (ENTRIES[channels], "onnxruntime", 8)
    # hand-written expectation: k-space (B, 16, 12) in; images (B, 16, 12) and scale (B,) out, all float32
    declared_in = [(t.name, t.data_type, list(t.dims), t.HasField("reshape")) for t in config.input]
    declared_out = [(t.name, t.data_type, list(t.dims), t.HasField("reshape")) for t in config.output]
    assert declared_in == [("kspace_real", fp32, [16, 12], False), ("kspace_imag", fp32, [16, 12], False)]
    assert declared_out == [(name, fp32, [1] if name == "scale" else [16, 12], name == "scale")
                            for name in OUTPUTS[channels]]
    assert list(config.output[-1].reshape.shape) == []
    # ... and the same as the repository's graph: names, float32, shapes without the (symbolic) batch axis
    for declared, values in ((config.input, graph.input), (config.output, graph.output)):
        assert [t.name for t in declared] == [v.name for v in values]
        for tensor, value in zip(declared, values, strict=True):
            shape = value.type.tensor_type.shape.dim
            assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and shape[0].dim_param
            assert list(tensor.dims) == ([d.dim_value for d in shape[1:]] or [1])


def test_config_serves_with_dynamic_batching_cpu_instances_threads_and_a_warmup_batch(repository):
    config = parse_config(repository / ENTRIES[1] / "config.pbtxt")
    (group,) = config.instance_group
    assert (model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind), group.count) == ("KIND_CPU", 1)
    assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 500
    assert {key: value.string_value for key, value in config.parameters.items()} == {
        "intra_op_thread_count": "0", "inter_op_thread_count": "1"}
    (warmup,) = config.model_warmup
    assert warmup.batch_size == 1 and sorted(warmup.inputs) == ["kspace_imag", "kspace_real"]
    for sample in warmup.inputs.values():
        assert (list(sample.dims), sample.data_type, sample.random_data) == ([16, 12], config.input[0].data_type, True)


def test_gpu_instances_batch_size_and_threads_are_options(tmp_path, exports):
    options = TritonOptions(max_batch_size=4, instance_kind="gpu", intra_op_threads=2)
    (entry,) = write_triton_repository([ServedExport("d2c2", exports[1])], tmp_path, options, provider="cpu")
    config = parse_config(entry.folder / "config.pbtxt")
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_GPU"
    assert config.max_batch_size == 4 and config.parameters["intra_op_thread_count"].string_value == "2"


# --- the model file: mask folded in, same reconstruction -----------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 2])
def test_the_repository_model_reconstructs_a_batch_like_the_export_with_its_training_mask(repository, exports, mask,
                                                                                         channels):
    model_file = repository / ENTRIES[channels] / "1" / "model.onnx"
    proto = onnx.load(str(model_file))
    assert [value.name for value in proto.graph.input] == ["kspace_real", "kspace_imag"]  # no mask input
    (folded_mask,) = [t for t in proto.graph.initializer if t.name == "mask"]
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(folded_mask), mask.values)
    metadata = read_exported_metadata(model_file)
    assert (metadata.mask_digest, metadata.image_channels) == (mask.digest(), channels)

    rng = np.random.default_rng(5)
    images = rng.standard_normal((3, *SIZE)) + (1j * rng.standard_normal((3, *SIZE)) if channels == 2 else 0)
    kspace = simulated_kspace(images, mask.values)
    expected = open_exported(exports[channels], "cpu").run_outputs(kspace, mask.values)
    session = RUNTIMES.get("cpu").session(model_file)
    got = session.run(list(OUTPUTS[channels]), {"kspace_real": kspace.real.astype(np.float32),
                                                "kspace_imag": kspace.imag.astype(np.float32)})
    for name, value in zip(OUTPUTS[channels], got, strict=True):
        # the same float32 graph with one input made constant: equal to 2e-6 of the output's max (ulps)
        assert value.shape == expected[name].shape
        assert np.abs(value - expected[name]).max() <= 2e-6 * np.abs(expected[name]).max(), name


def test_the_precision_metadata_names_the_entry(tmp_path, exports):
    proto = onnx.load(str(exports[1]))
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, "precision": '"int8"'})
    onnx.save(proto, str(tmp_path / "tiny1.int8.onnx"))
    (entry,) = write_triton_repository([ServedExport(NAMES[1], tmp_path / "tiny1.int8.onnx")], tmp_path / "repo",
                                       provider="cpu")
    assert (entry.name, entry.precision) == (ENTRIES[1] + "-int8", "int8")
    assert parse_config(entry.folder / "config.pbtxt").name == ENTRIES[1] + "-int8"


# --- existing entries and bad input --------------------------------------------------------------------------------

def test_the_same_export_twice_leaves_the_entry_alone_and_new_options_rewrite_only_the_config(tmp_path, exports):
    source = [ServedExport(NAMES[1], exports[1])]
    write_triton_repository(source, tmp_path, provider="cpu")
    first = snapshot(tmp_path)
    (again,) = write_triton_repository(source, tmp_path, provider="cpu")
    assert again.action == "unchanged" and snapshot(tmp_path) == first
    (gpu,) = write_triton_repository(source, tmp_path, TritonOptions(instance_kind="gpu"), provider="cpu")
    after = snapshot(tmp_path)
    assert gpu.action == "config updated" and after.keys() == first.keys()
    model = f"{ENTRIES[1]}/1/model.onnx"
    assert after[model] == first[model] and b"KIND_GPU" in after[f"{ENTRIES[1]}/config.pbtxt"]


def test_another_model_under_a_name_is_refused_before_any_entry_is_written(tmp_path, repository, exports):
    # the 2-channel model's entry copied under the 1-channel model's name: same name, another model
    shutil.copytree(repository / ENTRIES[2], tmp_path / ENTRIES[1])
    before = snapshot(tmp_path)
    sources = [ServedExport("first", exports[2]), ServedExport(NAMES[1], exports[1])]
    with pytest.raises(InputError, match="holds another model") as error:
        write_triton_repository(sources, tmp_path, provider="cpu")
    assert str(tmp_path / ENTRIES[1]) in str(error.value) and "image_channels" in str(error.value)
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == [ENTRIES[1]]


def test_two_exports_with_one_triton_name_are_refused(tmp_path, exports):
    with pytest.raises(InputError, match="both map to the Triton model name 'a-b'"):
        write_triton_repository([ServedExport("a/b", exports[1]), ServedExport("a@b", exports[2])], tmp_path,
                                provider="cpu")
    assert not any(tmp_path.iterdir())


def test_a_file_not_exported_by_this_tool_is_refused(tmp_path):
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["b"])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["b"])])
    onnx.save(onnx.helper.make_model(graph), str(tmp_path / "other.onnx"))
    with pytest.raises(InputError, match="not exported by this tool"):
        write_triton_repository([ServedExport("other", tmp_path / "other.onnx")], tmp_path / "repo", provider="cpu")
    assert not (tmp_path / "repo").exists()


# --- the seam: a repository format is one class ------------------------------------------------------------------

def test_triton_is_the_registered_serving_repository_format():
    assert SERVING_REPOSITORIES.names() == ["triton"] and SERVING_REPOSITORIES.get("triton") is TritonRepository


def test_another_format_is_one_class_over_the_shared_writer(tmp_path, exports):
    class FlatRepository(RepositoryFormat):
        """A format without a config: DIR/<name>/model.onnx."""

        title, option, model_file = "Flat", "--flat-repo", "model.onnx"

        def model_name(self, name, precision):
            return f"{name}-{precision}"

        def entry_files(self, name, folded):
            return {self.model_file: folded.model.SerializeToString()}

    (entry,) = FlatRepository().write([ServedExport("tiny", exports[1])], tmp_path, provider="cpu")
    assert (entry.name, entry.action) == ("tiny-fp32", "written") and sorted(snapshot(tmp_path)) == [
        "tiny-fp32/model.onnx"]
    served = snapshot(tmp_path)["tiny-fp32/model.onnx"]
    assert served == snapshot(write_triton_repository([ServedExport("tiny", exports[1])], tmp_path / "triton",
                                                      provider="cpu")[0].folder)["1/model.onnx"]
    with pytest.raises(InputError, match="both map to the Flat model name 'tiny-fp32'"):
        FlatRepository().write([ServedExport("tiny", exports[1])] * 2, tmp_path, provider="cpu")


# --- the CLI -------------------------------------------------------------------------------------------------------

def test_export_command_serves_every_precision_and_refuses_another_model_of_the_same_name(tmp_path, repository):
    run = tmp_path / "run"
    write_run(run, tiny_model(seed=3))
    triton = tmp_path / "triton"
    args = ["--run", str(run), "--provider", "cpu", "--triton-repo", str(triton)]
    result = CliRunner().invoke(export_command, [*args, "--precision", "fp32,fp16", "--triton-instance", "gpu",
                                                 "--triton-max-batch", "16"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in triton.iterdir()) == [ENTRIES[1], f"{ENTRIES[1]}-fp16"]
    served = {ENTRIES[1]: "sft_kd_at_d2c2@4x.onnx", f"{ENTRIES[1]}-fp16": "sft_kd_at_d2c2@4x.fp16.onnx"}
    for entry, export in served.items():
        assert f"Triton model {entry} (written) from {export}" in result.output
        config = parse_config(triton / entry / "config.pbtxt")
        kind = model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind)
        assert (config.name, config.max_batch_size, kind) == (entry, 16, "KIND_GPU")
        assert [t.name for t in onnx.load(str(triton / entry / "1" / "model.onnx")).graph.input] == [
            "kspace_real", "kspace_imag"]

    other = tmp_path / "other"
    shutil.copytree(repository / ENTRIES[2], other / ENTRIES[1])
    before = snapshot(other)
    shutil.rmtree(run / "exports")
    refused = CliRunner().invoke(export_command, [*args[:-1], str(other)])
    assert refused.exit_code == 2 and refused.output.count("\n") == 1, refused.output
    # refused from the entry's metadata before anything is exported: no ONNX file is left behind
    assert refused.output.startswith(f"Error: {other / ENTRIES[1]}: holds another model: "), refused.output
    assert "image_channels 2 (this export: 1)" in refused.output and "config_key None (this export: '0123456789ab')" \
        in refused.output
    assert snapshot(other) == before and not (run / "exports").exists()


@pytest.mark.parametrize(("options", "message"), [
    (["--triton-threads", "2", "--triton-instance", "gpu"],
     "Error: --triton-instance, --triton-threads: only for the Triton repository; add --triton-repo DIR"),
    (["--precision", "fp32,fp16", "--qat-steps", "5"],
     "Error: --qat-steps: only for INT8 files; add int8 to --precision (e.g. fp32,int8)"),
    (["--calibration-method", "minmax"],
     "Error: --calibration-method: only for INT8 files; add int8 to --precision (e.g. fp32,int8)"),
])
def test_export_options_that_would_do_nothing_are_refused_in_one_line(tmp_path, options, message):
    run = tmp_path / "run"
    write_run(run, tiny_model(seed=3))
    result = CliRunner().invoke(export_command, ["--run", str(run), "--provider", "cpu", *options])
    assert result.exit_code == 2 and result.output == message + "\n"
    assert not (run / "exports").exists()


def test_a_folded_model_the_checker_refuses_is_an_input_error_naming_the_file(tmp_path, exports):
    proto = onnx.load(str(exports[1]))
    proto.graph.node.append(onnx.helper.make_node("NoSuchOperator", ["kspace_real"], ["unused"], name="foreign"))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    with pytest.raises(InputError, match=r"the model with its mask folded in fails onnx\.checker") as error:
        write_triton_repository([ServedExport("broken", broken)], tmp_path / "repo", provider="cpu")
    assert str(error.value).startswith(f"{broken}: ") and "\n" not in str(error.value)
    assert not (tmp_path / "repo").exists()
