"""The exported file's format (``compressor.export.exported_file``): files of format version 1, written before the
metadata was typed, read with today's reader; version 2 written and read back unchanged, every version-1 key and JSON
value kept; other versions and malformed records refused in one line naming the file and the key.

The version-1 files are ``tests/fixtures/exports_v1/`` (a smoke run's d2c5 student in fp32, INT8 and fp16, written at
bb96ee9); each is read in well under a second.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest

from compressor.errors import InputError
from compressor.export.exported_file import (
    FORMAT_VERSION,
    V1_INT8_REASON,
    ExportMetadata,
    Precision,
    metadata_properties,
    read_exported_metadata,
    write_exported,
)
from compressor.export.runtimes import open_exported
from compressor.export.targets.export import phantom_kspace
from compressor.masks import SamplingMask

FIXTURES = Path(__file__).parent / "fixtures" / "exports_v1"
FILES = {Precision.FP32: FIXTURES / "student_d2c5@4x.onnx", Precision.INT8: FIXTURES / "student_d2c5@4x.int8.onnx",
         Precision.FP16: FIXTURES / "student_d2c5@4x.fp16.onnx"}
NEW_IN_VERSION_2 = {"format_version"}
"""Top-level keys whose JSON value a rewritten version-1 file changes (the INT8 layers' ``int8_because`` are added
inside ``quantization``, checked apart)."""


def save_with_properties(proto: onnx.ModelProto, path: Path, properties: Mapping[str, str]) -> Path:
    """``proto`` saved to ``path`` with exactly ``properties`` (JSON texts) as its metadata: old, odd or broken files
    that this tool would not write."""
    onnx.helper.set_model_props(proto, dict(properties))
    onnx.save(proto, str(path))
    return path


def json_text(value: object) -> str:
    """A JSON value as canonical text (NaN compares equal to NaN as text)."""
    return json.dumps(value, sort_keys=True)


def without_int8_reasons(quantization: dict) -> dict:
    return {**quantization, "layers": [{key: value for key, value in layer.items() if key != "int8_because"}
                                       for layer in quantization["layers"]]}


# --- version 1, read -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", list(FILES), ids=str)
def test_a_version_1_file_reads_as_typed_values(precision):
    metadata = read_exported_metadata(FILES[precision])
    assert metadata.precision is precision
    assert (metadata.architecture, metadata.parameters, metadata.image_size) == ("d2c5", 3045, (48, 48))
    assert (metadata.acceleration, metadata.formulation, metadata.line_axis) == (4.0, "lines", -1)
    assert metadata.mask.shape == (48, 48) and metadata.mask.dtype == np.float32
    assert metadata.mask_digest == SamplingMask(metadata.mask).digest() == "530ae06f81ad5735"
    assert metadata.model_options["channels"] == 32 and metadata.image_channels == 1
    assert metadata.outputs.names == ("image", "scale") and metadata.inputs == ("kspace_real", "kspace_imag", "mask")
    assert (metadata.origin.name, metadata.origin.role, metadata.origin.method, metadata.origin.weights) == (
        "student/d2c5@4x", "student", None, None)
    assert metadata.origin.stage == f"student-d2c5-{metadata.config_key}"
    assert metadata.exporter.opset == 18 and metadata.exporter.exporter.startswith("torch.onnx.export(dynamo=True)")
    if precision is Precision.FP32:
        assert (metadata.quality, metadata.quantization, metadata.fp16, metadata.precision_method) == (
            None, None, None, None)
    else:
        quality = metadata.quality
        assert (quality.reference, quality.slices) == ("fp32 export", 4)
        assert quality.source == "the run's 4 validation slices"
        assert quality.measured_on == "ONNX Runtime (CPUExecutionProvider)" and quality.psnr_fp32_db > 20
        assert abs(quality.delta_psnr_db) < 0.1 and metadata.precision_method


def test_every_layer_of_a_version_1_int8_file_has_a_reason():
    metadata = read_exported_metadata(FILES[Precision.INT8])
    quantization = metadata.quantization
    assert len(quantization.layers) == 15 and quantization.int8_nodes == [
        layer.node for layer in quantization.layers if layer.int8]
    assert len(quantization.int8_nodes) == 5 and all(layer.reason for layer in quantization.layers)
    assert {layer.reason for layer in quantization.layers if layer.int8} == {V1_INT8_REASON}
    grouped = [layer for layer in quantization.layers if layer.layer.endswith("grouped)")]
    assert grouped and all(math.isnan(layer.psnr_loss_alone_db) and "grouped half" in layer.reason
                           for layer in grouped)
    assert (quantization.settings.quant_format, quantization.calibration.slices, quantization.max_psnr_loss_db) == (
        "QDQ", 8, 0.1)
    assert quantization.qat.run is None and quantization.qat.max_steps == 100
    assert metadata.cpu.int8_dot_product is True and metadata.int8_speed.runs == 24
    assert metadata.int8_speed.openvino_speedup == pytest.approx(
        metadata.int8_speed.fp32_median_ms / metadata.int8_speed.openvino_int8_median_ms)


def test_a_version_1_fp16_file_records_its_nodes_and_bound():
    fp16 = read_exported_metadata(FILES[Precision.FP16]).fp16
    assert len(fp16.fp16_nodes) == 20 and fp16.max_psnr_loss_db == 0.05 and "rounding only" in fp16.cpu_note


def test_a_version_1_file_still_runs():
    exported = open_exported(FILES[Precision.FP32], "cpu")
    mask = SamplingMask(exported.metadata.mask)
    image, scale = exported.run(phantom_kspace(mask, 2), mask.values)
    assert image.shape == (2, 48, 48) and scale.shape == (2,) and np.isfinite(image).all()


# --- version 2, written ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", list(FILES), ids=str)
def test_rewriting_a_version_1_file_keeps_every_key_and_json_value(tmp_path, precision):
    proto = onnx.load(str(FILES[precision]))
    old = {key: json.loads(text) for key, text in metadata_properties(proto).items()}
    write_exported(proto, tmp_path / "again.onnx", read_exported_metadata(FILES[precision]))
    new = {key: json.loads(text) for key, text in metadata_properties(onnx.load(str(tmp_path / "again.onnx"))).items()}
    assert list(new) == list(old)  # the same keys, in the same order
    assert (old["format_version"], new["format_version"]) == (1, FORMAT_VERSION)
    if "quantization" in new:
        assert all(layer["int8_because"] == V1_INT8_REASON for layer in new["quantization"]["layers"]
                   if layer["int8"])
        new["quantization"] = without_int8_reasons(new["quantization"])
    assert {key: json_text(value) for key, value in new.items() if key not in NEW_IN_VERSION_2} == {
        key: json_text(value) for key, value in old.items() if key not in NEW_IN_VERSION_2}


@pytest.mark.parametrize("precision", list(FILES), ids=str)
def test_version_2_reads_back_what_it_wrote(tmp_path, precision):
    metadata = read_exported_metadata(FILES[precision])
    path = tmp_path / "v2.onnx"
    write_exported(onnx.load(str(FILES[precision])), path, metadata)
    again = read_exported_metadata(path)
    assert again == metadata and again.to_properties() == metadata.to_properties()
    for name in ("exporter", "origin", "quantization", "fp16", "quality", "cpu", "int8_speed"):
        ours, theirs = getattr(again, name), getattr(metadata, name)  # as JSON text: NaN layer costs are equal
        assert (ours is None and theirs is None) or json_text(ours.to_json()) == json_text(theirs.to_json()), name
    assert (again.precision, again.image_size, again.mask_digest) == (precision, (48, 48), metadata.mask_digest)
    assert json.loads(metadata_properties(onnx.load(str(path)))["format_version"]) == 2


def test_the_precision_is_spelled_once():
    assert [precision.file_name("m") for precision in Precision] == ["m.onnx", "m.int8.onnx", "m.fp16.onnx"]
    assert [precision.target for precision in Precision] == ["onnx-fp32", "onnx-int8", "onnx-fp16"]
    assert Precision.of_target("onnx-int8") is Precision.INT8 and Precision.of_target("test-copy") is None
    assert Precision.parse("fp32, int8,fp32") == [Precision.FP32, Precision.INT8]
    with pytest.raises(InputError, match=r"unknown precision 'int4'; valid: fp16, fp32, int8"):
        Precision.parse("fp32,int4")


# --- refused -------------------------------------------------------------------------------------------------------

def one_line(error: pytest.ExceptionInfo, path: Path) -> str:
    message = str(error.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    return message


@pytest.mark.parametrize("version", [0, 3, "2", True])
def test_another_format_version_is_refused_in_one_line_naming_the_file_and_its_version(tmp_path, version):
    proto = onnx.load(str(FILES[Precision.FP32]))
    path = save_with_properties(proto, tmp_path / "other.onnx",
                                {**metadata_properties(proto), "format_version": json.dumps(version)})
    with pytest.raises(InputError) as error:
        read_exported_metadata(path)
    message = one_line(error, path)
    assert f"format version {version!r} is not one this tool reads (1, 2)" in message
    with pytest.raises(InputError, match=r"format version"):
        open_exported(path, "cpu")


@pytest.mark.parametrize("key, value, named", [
    ("precision", '"int4"', "[precision]"),
    ("quantization", "5", "[quantization]"),
    ("quantization", "{}", "[quantization.activation_type]"),
    ("precision_quality", '{"delta_psnr_db": "much"}', "[precision_quality.delta_psnr_db]"),
    ("image_size", "[48]", "[image_size]"),
    ("mask", '{"shape": [48, 48]}', "[mask]"),
    ("opset", '"18"', "[opset]"),
    ("architecture", "not json", "[architecture]"),
])
def test_a_malformed_value_is_refused_in_one_line_naming_the_file_and_the_key(tmp_path, key, value, named):
    proto = onnx.load(str(FILES[Precision.INT8]))
    path = save_with_properties(proto, tmp_path / "malformed.onnx", {**metadata_properties(proto), key: value})
    with pytest.raises(InputError) as error:
        read_exported_metadata(path)
    assert named in one_line(error, path)


def test_a_malformed_layer_is_refused_naming_its_place(tmp_path):
    proto = onnx.load(str(FILES[Precision.INT8]))
    properties = metadata_properties(proto)
    quantization = json.loads(properties["quantization"])
    quantization["layers"][2]["int8"] = "yes"
    path = save_with_properties(proto, tmp_path / "layer.onnx",
                                {**properties, "quantization": json.dumps(quantization)})
    with pytest.raises(InputError) as error:
        read_exported_metadata(path)
    assert "[quantization.layers[2].int8]" in one_line(error, path)


def test_a_key_this_reader_does_not_know_is_ignored(tmp_path):
    proto = onnx.load(str(FILES[Precision.FP32]))
    path = save_with_properties(proto, tmp_path / "padded.onnx", {**metadata_properties(proto), "padding": '"x"'})
    assert read_exported_metadata(path) == read_exported_metadata(FILES[Precision.FP32])
    assert isinstance(ExportMetadata.from_properties(metadata_properties(proto)), ExportMetadata)
