"""The export seam: a target is one class registered in one line; every target goes through the shared validation;
a target that fails leaves nothing behind; the CLI's choices come from the registries.

Tiny models (d2c2, 8 channels) on 16x16 images, as in ``test_export.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from compressor.cli.benchmark_command import benchmark_command
from compressor.cli.export_command import export_command
from compressor.cli.reconstruct_command import reconstruct_command
from compressor.errors import InputError
from compressor.export.graph.validate import AtolError, ExportValidationError
from compressor.export.runtimes import RUNTIMES, open_exported, runtime_choices
from compressor.export.targets.export import ExportResult, export_model, export_run, phantom_kspace
from compressor.export.targets.onnx_file import OnnxFp32
from compressor.export.targets.registry import DEFAULT_TARGET, EXPORT_TARGETS, ExportRequest, ExportTarget
from compressor.training.checkpoint import save_weights
from tests.test_export import SIZE, tiny_model, write_run

# --- test-only targets, each registered in one line --------------------------------------------------------------


@EXPORT_TARGETS.register("test-copy")
class CopyTarget(OnnxFp32):
    """The fp32 file under another name: the smallest possible new target."""

    def output_name(self, stem: str) -> str:
        return f"{stem}.copy.onnx"


@EXPORT_TARGETS.register("test-perturbed")
class PerturbedTarget(OnnxFp32):
    """Writes a graph whose largest weight tensor is off by 0.1: validation must catch it."""

    def write(self, graph: onnx.ModelProto, request: ExportRequest, staged: Path) -> Path:
        weights = max(graph.graph.initializer, key=lambda tensor: np.prod(tensor.dims))
        weights.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weights) + np.float32(0.1), weights.name))
        return super().write(graph, request, staged)


@EXPORT_TARGETS.register("test-crashing")
class CrashingTarget(ExportTarget):
    """Writes half a file, then fails."""

    def write(self, graph: onnx.ModelProto, request: ExportRequest, staged: Path) -> Path:
        staged.write_bytes(graph.SerializeToString()[:100])
        raise RuntimeError("converter crashed")


@EXPORT_TARGETS.register("test-strict")
class StrictTarget(OnnxFp32):
    """The fp32 file held to a tolerance no float32 graph meets: the target's own tolerance is used."""

    relative_tolerance = 1e-15


@pytest.fixture(scope="module")
def mask():
    from compressor.masks import make_mask

    return make_mask("random", 4, SIZE, seed=1)


def export(tmp_path: Path, mask, target: str, name: str = "tiny.onnx") -> ExportResult:
    return export_model(tiny_model(), tmp_path / name, mask=mask, validation_kspace=phantom_kspace(mask, 1),
                        target=target)


def option_choices(command, name: str) -> list[str]:
    (option,) = [param for param in command.params if param.name == name]
    return list(option.type.choices)


# --- registration and the CLI ------------------------------------------------------------------------------------

def test_fp32_onnx_is_the_default_target():
    assert DEFAULT_TARGET == "onnx-fp32" and EXPORT_TARGETS.get("onnx-fp32") is OnnxFp32
    (option,) = [param for param in export_command.params if param.name == "target"]
    assert option.default == DEFAULT_TARGET


def test_a_target_registered_in_one_line_is_a_choice_of_compress_export():
    assert option_choices(export_command, "target") == EXPORT_TARGETS.names()
    assert {"onnx-fp32", "test-copy"} <= set(option_choices(export_command, "target"))
    help_text = CliRunner().invoke(export_command, ["--help"]).output
    assert "test-copy" in help_text
    unknown = CliRunner().invoke(export_command, ["--arch", "d2c2", "--weights", "w", "--target", "onnx-int3"])
    assert unknown.exit_code == 2 and "onnx-int3" in unknown.output and "onnx-fp32" in unknown.output


def test_formulation_and_provider_choices_come_from_their_registries():
    from compressor.export.graph.scanner_graph import FORMULATIONS, exportable_formulations

    assert option_choices(export_command, "formulation") == ["auto", *exportable_formulations()]
    assert set(exportable_formulations()) == {"lines", "dft"} < set(FORMULATIONS.names())
    assert runtime_choices() == ["auto", *RUNTIMES.names()] and "cpu" in RUNTIMES
    for command in (export_command, reconstruct_command, benchmark_command):
        assert option_choices(command, "provider") == runtime_choices()


def test_an_unknown_target_is_an_input_error_naming_the_valid_ones(tmp_path, mask):
    with pytest.raises(InputError, match=r"unknown export target 'onnx-int3'.*onnx-fp32"):
        export(tmp_path, mask, "onnx-int3")
    assert list(tmp_path.iterdir()) == []


# --- every target through the shared validation ------------------------------------------------------------------

def test_a_new_target_is_exported_and_validated_like_the_fp32_one(tmp_path, mask):
    result = export(tmp_path, mask, "test-copy", "tiny.copy.onnx")
    assert result.target == "test-copy" and result.path == tmp_path / "tiny.copy.onnx"
    assert result.max_abs_error < 1e-5 < result.tolerance and result.reference_evaluator_error < 1e-5
    assert open_exported(result.path, "cpu").metadata.formulation == "lines"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.copy.onnx"]


def test_the_shared_validation_collects_every_mismatch_of_a_target_and_leaves_nothing(tmp_path, mask):
    with pytest.raises(ExportValidationError, match=r"tiny\.onnx failed validation") as caught:
        export(tmp_path, mask, "test-perturbed")
    mismatches = [failure for failure in caught.value.failures if isinstance(failure, AtolError)]
    runtimes = {str(failure).split(" image")[0] for failure in mismatches if " image:" in str(failure)}
    assert runtimes == {"ONNX Runtime (CPUExecutionProvider)", "onnx.reference"}  # both runtimes, not the first only
    assert list(tmp_path.iterdir()) == []


def test_a_target_that_fails_while_writing_leaves_nothing_behind(tmp_path, mask):
    with pytest.raises(RuntimeError, match="converter crashed"):
        export(tmp_path, mask, "test-crashing")
    assert list(tmp_path.iterdir()) == []


def test_a_target_is_validated_at_its_own_tolerance(tmp_path, mask):
    with pytest.raises(ExportValidationError, match="x over"):
        export(tmp_path, mask, "test-strict")
    assert list(tmp_path.iterdir()) == []


# --- a run directory, through the targets ------------------------------------------------------------------------

SUMMARY_KEYS = {"file", "architecture", "parameters", "image_channels", "formulation", "provider", "max_abs_error",
                "relative_error", "tolerance", "reference_evaluator_error", "validation_slices", "seconds", "precision"}


def test_export_run_writes_each_target_and_lists_every_file_in_exports_json(tmp_path):
    write_run(tmp_path, tiny_model(seed=11))
    results = export_run(tmp_path, targets=("onnx-fp32", "test-copy"), log=lambda _: None)
    exports = tmp_path / "exports"
    assert sorted(p.name for p in exports.iterdir()) == ["exports.json", "sft_kd_at_d2c2@4x.copy.onnx",
                                                         "sft_kd_at_d2c2@4x.onnx"]
    listed = json.loads((exports / "exports.json").read_text())
    assert listed == json.loads(json.dumps([result.entry().to_json() for result in results]))
    assert all(set(row) == SUMMARY_KEYS for row in listed)
    assert [row["file"] for row in listed] == [str(exports / "sft_kd_at_d2c2@4x.onnx"),
                                               str(exports / "sft_kd_at_d2c2@4x.copy.onnx")]


def test_compress_export_target_names_the_file_of_bare_weights(tmp_path):
    weights = save_weights(tmp_path / "w.safetensors", tiny_model(seed=7))
    result = CliRunner().invoke(export_command, ["--arch", "d2c2", "--weights", str(weights), "--width", "8",
                                                 "--image-size", "16", "--target", "test-copy"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "w.copy.onnx").is_file() and not (tmp_path / "w.onnx").exists()
