"""The benchmark's accounting: the DF share from ONNX Runtime's per-node profile, and the precision rows.

The DF share is ``sum(kernel time of the DF's nodes) / sum(kernel time of every node)``: these tests pin the parsing
of a profile on a hand-made one, that the DF nodes found in a tiny export are exactly its DF layers (one per cascade,
nothing else between the blocks), and that the share of a real profile lies in [0, 1]. The precision rows: one row
per model and precision, timed in one loop, with the file's size and quality change; results written before
precisions existed still make their tables (as fp32).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

from compressor.cli import main as cli
from compressor.errors import InputError
from compressor.export.benchmark.precision_files import (
    PrecisionFile,
    parse_precisions,
    read_precision_file,
    shared_formulation,
    timing_file,
)
from compressor.export.benchmark.profile import (
    NodeTime,
    data_fidelity_scopes,
    df_share,
    matched_cascades,
    node_scopes,
    profile_graph,
    profile_node_times,
    require_data_fidelity_scopes,
    require_matched_data_fidelity,
    time_by_op_type,
)
from compressor.export.benchmark.run import TrainedModel, benchmark_models, run_precision_files
from compressor.export.benchmark.timing import data_fidelity_layers, export_for_timing
from compressor.export.runtimes import RUNTIMES, graph_feed
from compressor.export.targets.export import export_model, phantom_kspace
from compressor.masks import make_mask
from compressor.models import ModelOptions, build_model

SIZE = (16, 20)
TINY = ModelOptions(width=8)


@pytest.fixture(scope="module")
def mask():
    return make_mask("random", 4, SIZE, seed=1)


def scoped_node(op_type: str, inputs: list[str], output: str, scopes: list[str]) -> onnx.NodeProto:
    """A node named ``node_<output>`` with the exporter's ``name_scopes`` metadata."""
    node = helper.make_node(op_type, inputs, [output], name=f"node_{output}")
    entry = node.metadata_props.add()
    entry.key, entry.value = "pkg.torch.onnx.name_scopes", repr(["", *scopes, output])
    return node


def hand_made_graph() -> onnx.ModelProto:
    """conv (block 0) -> matmul, add (DF 0) -> conv_1 (block 1): two DF nodes in one cascade's DF scope."""
    nodes = [scoped_node("Conv", ["x", "w"], "conv", ["cascades.0.block", "cascades.0.block.conv1"]),
             scoped_node("MatMul", ["conv", "p"], "matmul", ["cascades.0.data_fidelity"]),
             scoped_node("Add", ["matmul", "x"], "add", ["cascades.0.data_fidelity"]),
             scoped_node("Conv", ["add", "w"], "conv_1", ["cascades.1.block", "cascades.1.block.conv1"])]
    value = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "hand", [value(name, TensorProto.FLOAT, None) for name in ("x", "w", "p")],
                              [value("conv_1", TensorProto.FLOAT, None)])
    return helper.make_model(graph)


def kernel_event(name: str, op_type: str, ts: int, dur: int) -> dict:
    return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op_type}}


def run_event(ts: int, dur: int) -> dict:
    return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}


def test_share_of_a_hand_made_profile():
    # Run 0 (warm-up, dropped) costs 10 000 us in the conv alone; run 1: conv 600 + conv_1 quantized under a reused
    # name 100 (blocks), fused matmul 200 + relaid-out add 50 (DF), two reorders ONNX Runtime inserted 25 + 25
    # (neither) -> 250 / 1000.
    events = [run_event(0, 10_100), kernel_event("node_conv", "Conv", 10, 10_000),
              run_event(20_000, 1_100),
              kernel_event("node_conv", "Conv", 20_010, 600),
              kernel_event("node_matmul/MatMulAddFusion", "Gemm", 20_610, 200),
              kernel_event("add_nchwc", "Add", 20_810, 50),
              kernel_event("ReorderOutput", "ReorderOutput", 20_860, 25),
              kernel_event("ReorderOutput_token_3", "ReorderOutput", 20_885, 25),
              kernel_event("node_conv_1_token_7", "QLinearConv", 20_910, 100)]
    times = {node.name: node for node in profile_node_times(events, hand_made_graph(), skip_runs=1)}
    assert times["node_conv"] == NodeTime("node_conv", "Conv", "node_conv", None, 600.0)
    assert times["node_matmul/MatMulAddFusion"].scope == "cascades.0.data_fidelity"
    assert (times["add_nchwc"].source, times["add_nchwc"].scope) == ("node_add", "cascades.0.data_fidelity")
    assert times["node_conv_1_token_7"].source == "node_conv_1" and times["node_conv_1_token_7"].scope is None
    assert times["ReorderOutput"].source is times["ReorderOutput_token_3"].source is None
    assert df_share(list(times.values())) == pytest.approx(0.25)
    assert time_by_op_type(list(times.values())) == pytest.approx(
        {"Conv": 0.6, "DF": 0.25, "QLinearConv": 0.1, "ReorderOutput": 0.05})


def test_a_profile_without_the_kept_runs_is_refused():
    with pytest.raises(ValueError, match="1 runs, fewer than the 2"):
        profile_node_times([run_event(0, 10)], hand_made_graph(), skip_runs=1)


def _blocks_and_fidelities(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """``(cascade part, node name)`` in the graph's (topological) order, ``part`` ``"block i"``, ``"df i"``,
    ``"projection"`` or ``""`` for the rest (masking, normalisation, outputs)."""
    fidelity = data_fidelity_scopes(model)
    parts = []
    for node in model.graph.node:
        block = [scope for scope in node_scopes(node) if scope.startswith("cascades.") and scope.endswith(".block")]
        if node.name in fidelity:
            scope = fidelity[node.name]
            part = "projection" if scope == "line_projection" else f"df {scope.split('.')[1]}"
        else:
            part = f"block {block[0].split('.')[1]}" if block else ""
        parts.append((part, node.name))
    return parts


@pytest.mark.parametrize(("formulation", "channels"), [("lines", 1), ("lines", 2), ("dft", 1)])
def test_the_df_nodes_are_exactly_one_df_per_cascade(tmp_path, mask, formulation, channels):
    model = build_model("d2c3", ModelOptions(width=8, image_channels=channels)).eval()
    exported = onnx.load(str(export_for_timing(model, mask, formulation, tmp_path)))
    parts = _blocks_and_fidelities(exported)
    cascades = {part for part, _ in parts if part.startswith("df ")}
    assert cascades == {"df 0", "df 1", "df 2"} and data_fidelity_layers(model) == 3
    assert ("projection" in {part for part, _ in parts}) == (formulation == "lines")
    # Between block i and block i + 1 the graph runs cascade i's DF and nothing else but, maybe, the projection (built
    # once from the mask, before its first use); the last cascade's DF comes after the last block.
    names = [part for part, _ in parts]
    for cascade in range(3):
        last_block = max(index for index, part in enumerate(names) if part == f"block {cascade}")
        next_block = names.index(f"block {cascade + 1}") if cascade < 2 else len(names)
        fidelity = [index for index, part in enumerate(names) if part == f"df {cascade}"]
        assert last_block < min(fidelity) and max(fidelity) < next_block
        if cascade < 2:
            assert set(names[last_block + 1:next_block]) <= {f"df {cascade}", "projection"}
    if (formulation, channels) == ("lines", 1):  # z + (x_u - P z), lambda -> infinity
        op_types = {node.name: node.op_type for node in exported.graph.node}
        assert sorted(op_types[name] for part, name in parts if part == "df 0") == ["Add", "MatMul", "Sub"]


def test_a_graph_without_df_scopes_is_refused():
    bare = hand_made_graph()
    for node in bare.graph.node:
        del node.metadata_props[:]
    with pytest.raises(RuntimeError, match="nodes in 0 DF scopes, expected one per DF layer"):
        require_data_fidelity_scopes(bare, 1)
    require_data_fidelity_scopes(hand_made_graph(), 1)


def test_the_profile_of_a_tiny_export_attributes_every_cascades_df(tmp_path, mask):
    model = build_model("d2c2", TINY).eval()
    path = export_for_timing(model, mask, "lines", tmp_path)
    times = profile_graph(path, RUNTIMES.get("cpu"), 1, graph_feed(phantom_kspace(mask, count=1), mask.values),
                          runs=3, warmup=1)
    assert {node.scope for node in times} >= {"cascades.0.data_fidelity", "cascades.1.data_fidelity"}
    assert all(node.source is not None for node in times if node.op_type in ("Conv", "MatMul", "Sub"))
    assert 0 < df_share(times) < 1


# --- precisions ---------------------------------------------------------------------------------------------------

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


@pytest.fixture(scope="module")
def int8_file(tmp_path_factory, mask) -> tuple[torch.nn.Module, PrecisionFile]:
    """A tiny model and its INT8 file, made for timing (phantom calibration)."""
    torch.manual_seed(0)
    model = build_model("d2c2", TINY).eval()
    return model, timing_file(model, mask, "int8", tmp_path_factory.mktemp("int8"))


def test_precision_names_are_checked_like_export_does():
    assert parse_precisions("fp32, int8,fp32") == ["fp32", "int8"]
    with pytest.raises(InputError, match="unknown precision 'fp8'"):
        parse_precisions("fp32,fp8")


def test_a_precision_file_reads_its_quality_and_an_fp32_one_none(tmp_path, mask, int8_file):
    _, made = int8_file
    assert made.delta_psnr is None  # made for timing: its phantom quality is not kept
    read = read_precision_file(made.path)
    quality = json.loads({p.key: p.value for p in onnx.load(str(made.path)).metadata_props}["precision_quality"])
    assert (read.precision, read.delta_psnr, read.delta_ssim) == ("int8", quality["delta_psnr_db"],
                                                                  quality["delta_ssim"])
    fp32 = tmp_path / "tiny.onnx"
    export_model(build_model("d2c2", TINY).eval(), fp32, mask=mask, validation_kspace=phantom_kspace(mask, count=1))
    assert read_precision_file(fp32) == PrecisionFile("fp32", fp32, None, None)


def test_a_missing_run_export_is_refused_with_the_command_that_writes_it(tmp_path):
    with pytest.raises(InputError) as error:
        run_precision_files(tmp_path, "sft_kd_at_d3c5@4x.onnx", ["fp32", "int8"])
    message = str(error.value)
    assert "sft_kd_at_d3c5@4x.int8.onnx" in message and "compress export --run" in message
    assert "--precision int8" in message and run_precision_files(tmp_path, "x.onnx", ["fp32"]) == {}


def test_every_precision_of_a_model_is_a_row_timed_in_one_loop(mask, int8_file):
    model, made = int8_file
    file = PrecisionFile("int8", made.path, -0.04, -0.0007)
    result = benchmark_models([], SIZE, mask, threads=1, iterations=30, warmup=1, teacher="d2c2", options=TINY,
                              trained={"sft_kd/at/d2c2@4x": TrainedModel(model, "sft_kd", 31.0, 0.9, {"int8": file})},
                              precisions=["fp32", "int8"], log=lambda _: None)
    fp32, int8 = result.models
    assert (fp32.precision, int8.precision) == ("fp32", "int8") and fp32.name == int8.name == "sft_kd/at/d2c2@4x"
    assert fp32.speedup_vs_fp32 == 1.0
    assert int8.speedup_vs_fp32 == pytest.approx(fp32.ort_ms_median / int8.ort_ms_median)
    assert int8.file_bytes == made.path.stat().st_size and fp32.file_bytes > 0
    assert (int8.delta_psnr, int8.delta_ssim, int8.psnr) == (-0.04, -0.0007, 31.0)
    assert fp32.delta_psnr is None and fp32.ort_2ch_ms_median > 0 and int8.ort_2ch_ms_median is None
    assert all(0 < row.df_share < 1 for row in result.models)  # a share, whatever the timing noise
    assert fp32.df_share == fp32.df_share_1ch and 0 < fp32.df_share_2ch < 1
    assert result.to_json()["cpu"]["instruction_sets"] is not None


@pytest.fixture(scope="module")
def dft_files(tmp_path_factory, mask) -> dict[str, tuple[torch.nn.Module, PrecisionFile]]:
    """Two tiny models of one architecture, each with an INT8 file exported with the "dft" formulation (the mask is
    whole columns, so "auto" would trace "lines"): the first model's, and for the second a copy padded by 20 kB of
    metadata, so that a row's file size says which file was timed."""
    folder = tmp_path_factory.mktemp("dft")
    torch.manual_seed(0)
    first = build_model("d2c2", TINY).eval()
    made = timing_file(first, mask, "int8", folder, formulation="dft")
    proto = onnx.load(str(made.path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "padding", json.dumps("x" * 20_000)
    padded = folder / "padded.int8.onnx"
    onnx.save(proto, str(padded))
    torch.manual_seed(1)
    return {"std_kd/at/d2c2@4x": (first, made),
            "sft_kd/at/d2c2@4x": (build_model("d2c2", TINY).eval(), PrecisionFile("int8", padded))}


def test_a_dft_file_is_matched_by_the_nodes_of_a_dft_fp32_graph_only(tmp_path, mask, dft_files):
    model, made = dft_files["std_kd/at/d2c2@4x"]
    int8 = onnx.load(str(made.path))
    dft = data_fidelity_scopes(onnx.load(str(export_for_timing(model, mask, "dft", tmp_path))))
    assert set(dft) <= {node.name for node in int8.graph.node}  # every DF node, under its name (the DF stays fp32)
    assert matched_cascades(int8, dft) == {"cascades.0.data_fidelity", "cascades.1.data_fidelity"}
    require_matched_data_fidelity(made.path, dft, 2, "dft")
    for node in int8.graph.node:  # a file whose nodes the fp32 graph does not name (another exporter version)
        node.name = f"renamed_{node.name}"
    renamed = tmp_path / "renamed.int8.onnx"
    onnx.save(int8, str(renamed))
    with pytest.raises(InputError, match=r"match the DF layers of 0 of the 2 cascades .* 'dft' formulation") as error:
        require_matched_data_fidelity(renamed, dft, 2, "dft")
    assert str(error.value).startswith(str(renamed)) and "\n" not in str(error.value)


def test_files_of_two_formulations_are_refused_and_the_fp32_graph_takes_theirs(mask, int8_file, dft_files):
    _, lines_file = int8_file
    _, dft_file = dft_files["std_kd/at/d2c2@4x"]
    assert shared_formulation([dft_file]) == "dft" and shared_formulation([]) == "auto"
    with pytest.raises(InputError, match=f"exported with the 'dft' DF formulation but {lines_file.path.name} with "
                                         "'lines'") as error:
        shared_formulation([lines_file, dft_file])
    assert error.value.path == dft_file.path


def test_each_models_own_precision_file_is_timed_against_an_fp32_graph_of_its_formulation(mask, dft_files):
    trained = {name: TrainedModel(model, name.split("/")[0], 30.0 + index, 0.9,
                                  {"int8": PrecisionFile("int8", made.path, -0.01 * (index + 1), -0.001)})
               for index, (name, (model, made)) in enumerate(dft_files.items())}
    result = benchmark_models([], SIZE, mask, threads=1, iterations=30, warmup=1, teacher="d2c2", options=TINY,
                              trained=trained, precisions=["fp32", "int8"], log=lambda _: None)
    rows = {(row.name, row.precision): row for row in result.models}
    assert len(rows) == 4 and {row.formulation for row in result.models} == {"dft"}
    for index, (name, (_, made)) in enumerate(dft_files.items()):
        fp32, int8 = rows[name, "fp32"], rows[name, "int8"]
        assert int8.file_bytes == made.path.stat().st_size  # its own file, not the architecture's first model's
        assert (int8.delta_psnr, int8.psnr) == (-0.01 * (index + 1), 30.0 + index)
        assert int8.speedup_vs_fp32 == pytest.approx(fp32.ort_ms_median / int8.ort_ms_median)
        assert 0 < int8.df_share < 1  # its DF nodes found in the dft fp32 graph's scopes
    first, second = (rows[name, "int8"] for name in dft_files)
    assert second.file_bytes > first.file_bytes + 19_000
    assert rows["std_kd/at/d2c2@4x", "fp32"].ort_ms_median == rows["sft_kd/at/d2c2@4x", "fp32"].ort_ms_median


def test_the_benchmark_command_refuses_an_unknown_precision_in_one_line():
    outcome = CliRunner().invoke(cli, ["benchmark", "--precision", "fp32,bf8", "--image-size", "16"])
    assert outcome.exit_code == 2 and outcome.output.startswith("Error: unknown precision 'bf8'")
    assert outcome.output.count("\n") == 1


def test_results_written_before_precisions_still_make_their_report(tmp_path):
    run = shutil.copytree(RESULTS / "quick-at", tmp_path / "quick-at")
    rows = json.loads((run / "benchmark.json").read_text())["models"]
    assert rows and all("precision" not in row for row in rows)
    outcome = CliRunner().invoke(cli, ["report", str(run)])
    assert outcome.exit_code == 0, outcome.output
    table8 = (run / "report" / "table8.md").read_text()
    header = next(line for line in table8.splitlines() if "Precision" in line)
    assert [cell.strip() for cell in header.split("|")][3:5] == ["Method", "Precision"]
    assert "int8" not in table8 and "| fp32 " in table8 and (run / "report" / "psnr_vs_latency.png").is_file()


def test_table8_and_the_figure_pair_each_int8_files_latency_with_its_own_quality(tmp_path):
    from compressor.evaluate.figures import psnr_vs_latency, trade_off_points
    from compressor.evaluate.run_data import load_run
    from compressor.evaluate.table_text import MISSING
    from compressor.evaluate.tables import table8

    run = shutil.copytree(RESULTS / "quick-at", tmp_path / "quick-at")
    benchmark = json.loads((run / "benchmark.json").read_text())
    # Two d3c5 models whose INT8 files kept different convolutions in fp32: different latencies and ΔPSNR.
    own = {"std_kd/at/d3c5@4x": (5.25, -0.02), "sft_kd/at/d3c5@4x": (6.5, -0.07)}
    fp32 = {row["name"]: row for row in benchmark["models"]}
    benchmark["models"] += [{**fp32[name], "precision": "int8", "ort_ms_median": latency, "delta_psnr": delta,
                             "delta_ssim": -0.001} for name, (latency, delta) in own.items()]
    (run / "benchmark.json").write_text(json.dumps(benchmark))
    data = load_run(run)
    table = table8(data)
    int8 = next(row for row in table.rows if row[1] == "Student (d3c5)" and row[3] == "int8")
    assert int8[6] == MISSING  # the Latency column is fp32's, shared by an architecture's models; INT8's are per cell
    assert int8[9] == "Δ -0.020 dB / -0.0010, 5.250 ms" and int8[11] == "Δ -0.070 dB / -0.0010, 6.500 ms"
    fp32_row = next(row for row in table.rows if row[1] == "Student (d3c5)" and row[3] == "fp32")
    assert fp32_row[6] == f"{fp32['sft_kd/at/d3c5@4x']['ort_ms_median']:.3f}"
    points = {point.label: point for point in trade_off_points(data, 4.0)}
    for name, (latency, delta) in own.items():
        role = next(record for record in data.records if record.name == name)
        mine = [p for p in points.values() if p.role == role.role and p.precision == "int8"]
        assert len(mine) == 1 and mine[0].latency_ms == latency
        assert mine[0].psnr == pytest.approx(data.summary(role, "psnr").mean + delta)
    assert psnr_vs_latency(data, tmp_path / "figure.png").path.is_file()


# --- the precision benchmark script's verdicts ------------------------------------------------------------------------

def test_the_int8_targets_are_judged_on_d3c5_and_speed_only_with_an_int8_dot_product():
    from benchmarks.precision import target_checks

    rows = [{"arch": "d3c5", "precision": "int8", "size": "240x240", "delta_psnr": -0.05, "speedup_vs_fp32": 1.6},
            {"arch": "d3c5", "precision": "int8", "size": "120x120", "delta_psnr": -0.12, "speedup_vs_fp32": 0.9},
            {"arch": "d2c5", "precision": "int8", "size": "240x240", "delta_psnr": -0.5, "speedup_vs_fp32": 0.5}]
    vnni = target_checks(rows, {"int8_dot_product": True})
    assert (vnni["quality_met"], vnni["int8_speedup_vs_fp32_240"], vnni["speed_met"]) == (False, 1.6, True)
    avx2 = target_checks([{**row, "delta_psnr": None} for row in rows], {"int8_dot_product": False})
    assert (avx2["quality_met"], avx2["speed_met"]) == (None, None)


def test_openvino_is_recommended_only_where_clearly_faster():
    from benchmarks.precision import openvino_verdict

    def comparison(*ratios: float) -> dict:
        return {"d3c5 at 240x240": {"by_precision": {str(i): {"openvino_over_onnxruntime": r}
                                                     for i, r in enumerate(ratios)}}}

    assert openvino_verdict(comparison(2.27, 1.89)).startswith("OpenVINO was not clearly faster on any of the 2")
    assert "ONNX Runtime is the runtime to use" in openvino_verdict(comparison(0.95, 1.2))  # 5 % is within noise
    assert openvino_verdict(comparison(0.8, 1.2)).startswith("OpenVINO was clearly faster on 1 of 2 files (best 1.25x)")
