"""Precision exports: INT8 (post-training, convolutions chosen by their PSNR cost) and fp16, each its own validated
ONNX file whose DF stays fp32, validated in image terms against the fp32 export, named by its precision, and
recording how it was made.

Tiny models (d2c2, 8 channels) on 16x16 images, as in ``test_export.py``; each INT8 export takes a few seconds.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from click.testing import CliRunner
from onnx import TensorProto

from compressor.cli.export_command import export_command
from compressor.export.benchmark.profile import data_fidelity_scopes
from compressor.export.exported_file import ExportMetadata, Precision, QatRecord
from compressor.export.graph.validate import ExportValidationError, QualityLossError
from compressor.export.precision.layers import ConvLayer, activations_between, conv_layers
from compressor.export.precision.options import PrecisionOptions
from compressor.export.precision.quantizer import int8_settings
from compressor.export.precision.sensitivity import choose_convolutions
from compressor.export.runtimes import open_exported
from compressor.export.runtimes.cpu import parse_cpuinfo
from compressor.export.targets.export import export_model, phantom_kspace
from compressor.export.targets.registry import EXPORT_TARGETS, precision_choices, precision_targets
from compressor.models import ModelOptions
from compressor.training.checkpoint import save_weights
from tests.test_export import SIZE, TINY, tiny_model

COMPLEX = ModelOptions(width=8, image_channels=2)


@pytest.fixture(scope="module")
def mask():
    from compressor.masks import make_mask

    return make_mask("random", 4, SIZE, seed=1)


def export(tmp_path, mask, precision: str, model=None, **options):
    model = model if model is not None else tiny_model()
    return export_model(model, tmp_path / f"tiny.{precision}.onnx", mask=mask,
                        validation_kspace=phantom_kspace(mask, 2, model.image_channels),
                        target=Precision(precision).target, precision_options=PrecisionOptions(**options))


@pytest.fixture(scope="module")
def int8_result(tmp_path_factory, mask):
    """INT8 of ``tiny_model()`` with a bound of 10 dB, which takes every convolution."""
    return export(tmp_path_factory.mktemp("int8"), mask, "int8", max_psnr_loss=10.0)


@pytest.fixture(scope="module")
def fp16_result(tmp_path_factory, mask):
    return export(tmp_path_factory.mktemp("fp16"), mask, "fp16")


# --- names and choices ------------------------------------------------------------------------------------------

def test_precisions_are_targets_registered_in_one_line_each():
    assert precision_choices() == ["fp16", "fp32", "int8"]  # the registry's (sorted) order
    assert precision_targets("fp32, int8,fp32") == ["onnx-fp32", "onnx-int8"]
    names = {precision: EXPORT_TARGETS.get(Precision(precision).target)().output_name("m")
             for precision in precision_choices()}
    assert names == {"fp32": "m.onnx", "int8": "m.int8.onnx", "fp16": "m.fp16.onnx"}


def test_the_convolutions_are_named_by_the_model_layers(int8_result):
    labels = [layer.label for layer in conv_layers(onnx.load(str(int8_result.path)), tiny_model())]
    assert labels == [f"cascade {c} conv {layer}" for c in (1, 2) for layer in
                      ("1 (1->8)", "2 (8->1, grouped)", "2 (8->1, channel sum)")]


def test_int8_settings_follow_the_onnx_runtime_guide_for_the_cpu():
    avx2 = parse_cpuinfo("model name\t: EPYC\nflags\t\t: sse avx avx2 fma\n", "x86_64")
    vnni = parse_cpuinfo("model name\t: Xeon\nflags\t\t: avx2 avx512f avx512_vnni amx_int8\n", "x86_64")
    arm = parse_cpuinfo("CPU part\t: 0xd0c\nFeatures\t: fp asimd asimddp\n", "aarch64")
    assert avx2.instruction_sets == ("AVX2",) and not avx2.int8_dot_product
    assert vnni.instruction_sets == ("AVX2", "AVX-512", "AVX-512-VNNI", "AMX-INT8") and vnni.int8_dot_product
    assert [int8_settings(cpu).reduce_range for cpu in (avx2, vnni, arm)] == [True, False, False]
    settings = [int8_settings(cpu) for cpu in (avx2, vnni, arm)]
    forms = {(s.activation_type, s.weight_type, s.per_channel, s.quant_format) for s in settings}
    assert forms == {("QInt8", "QInt8", True, "QDQ")}


def test_the_speed_verdict_says_in_one_line_why_int8_does_not_pay_from_the_cpu_flags():
    from compressor.export.precision.speed import NO_DOT_PRODUCT_WHY, OVERHEAD_WHY, int8_verdict

    avx2 = parse_cpuinfo("model name\t: EPYC\nflags\t\t: sse avx avx2 fma\n", "x86_64")
    vnni = parse_cpuinfo("model name\t: EPYC\nflags\t\t: avx2 avx512f avx512_vnni\n", "x86_64")
    slow = int8_verdict("d2c5", avx2, 0.58)
    assert slow.startswith("INT8 does not pay for d2c5 on this CPU (EPYC (AVX2), 0.58x the fp32 speed)")
    assert NO_DOT_PRODUCT_WHY in slow and "\n" not in slow
    assert OVERHEAD_WHY in int8_verdict("d2c5", vnni, 0.9)  # a dot product, and still slower: the conversions
    assert int8_verdict("d3c5", vnni, 1.6) == "INT8 pays for d3c5 on this CPU (EPYC (AVX2, AVX-512, AVX-512-VNNI)): " \
                                            "1.60x the fp32 speed"


def test_the_sensitivity_analysis_takes_blocks_whole_then_the_leading_part_of_a_block_left_out():
    # Blocks of two convolutions each (a cascade's INT8 island): n<c>a, n<c>b for cascades 0..3.
    layers = [ConvLayer(f"n{c}{part}", c, k, 8, 8) for c in range(4) for k, part in ((2, "a"), (3, "b"))]
    block = {0: 0.01, 1: 0.2, 2: 0.03, 3: 0.04}
    measured = []

    def loss_of(nodes):  # hand-made: a block's first conv costs a quarter of the block, the second the rest
        measured.append(tuple(nodes))
        return sum(block[int(n[1])] * (0.25 if n.endswith("a") else 0.75) for n in nodes), tuple(nodes)

    choices, chosen, trials = choose_convolutions(layers, loss_of, bound=0.06, layer_share=1.0)
    # Block 1 alone is over the bound; blocks 0+2+3 = 0.08 > 0.06 drops block 3 (the costliest alone); 0+2 fits.
    # Then the blocks left out, cheapest first: block 3's first conv fits (0.05), block 1's does not (0.10).
    assert chosen == ("n0a", "n0b", "n2a", "n2b", "n3a") and trials == 8
    assert [c.quantized for c in choices] == [True, True, False, False, True, True, True, False]
    assert "0.200 dB > 0.06 dB" in choices[2].reason and "0.080 dB > 0.06 dB" in choices[7].reason
    assert "its first 1 INT8 convolution(s) with the other INT8 blocks cost 0.050 dB" in choices[6].reason
    assert [c.psnr_loss for c in choices[:2]] == [0.01, 0.01]  # a layer records its block's cost
    assert measured[:4] == [("n0a", "n0b"), ("n1a", "n1b"), ("n2a", "n2b"), ("n3a", "n3b")]
    assert measured[6:] == [chosen, ("n0a", "n0b", "n2a", "n2b", "n3a", "n1a")]
    # With half the bound per block, block 3 (0.04 > 0.03) is no candidate at all: blocks 0+2 are measured once.
    assert choose_convolutions(layers, loss_of, bound=0.06, layer_share=0.5)[1:] == (chosen, 7)
    # No bound: every convolution INT8, measured once together, no block alone.
    measured.clear()
    choices, chosen, trials = choose_convolutions(layers, loss_of, bound=float("inf"))
    assert len(chosen) == 8 and trials == 1 and measured == [chosen]
    assert all(c.quantized and np.isnan(c.psnr_loss) for c in choices)


def relu_graph(reader: str) -> onnx.ModelProto:
    """x -> Conv a -> Relu r -> ``reader`` (a Conv b, or the residual Add of a block's last output) -> y."""
    from onnx import helper

    nodes = [helper.make_node("Conv", ["x", "w"], ["a_out"], name="a"), helper.make_node("Relu", ["a_out"], ["r_out"],
                                                                                         name="r")]
    nodes.append(helper.make_node("Conv", ["r_out", "w"], ["y"], name="b") if reader == "Conv" else
                 helper.make_node("Add", ["r_out", "x"], ["y"], name="b"))
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 1, 1], [1.0])
    value = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 1, 4, 4]) for name in ("x", "y")]
    return helper.make_model(helper.make_graph(nodes, "g", value[:1], value[1:], [weight]))


def test_a_relu_is_folded_only_between_two_int8_convolutions():
    """Folded into the first convolution's output range, it saves a requantization; with an fp32 reader it stays, or
    that reader would get the convolution's output back without the Relu."""
    assert activations_between(relu_graph("Conv"), ["a", "b"]) == ["r"]
    assert activations_between(relu_graph("Conv"), ["a"]) == []
    assert activations_between(relu_graph("Add"), ["a"]) == []
    graph_output = relu_graph("Conv")  # a Relu whose output the graph also returns keeps it
    graph_output.graph.output.append(onnx.helper.make_tensor_value_info("r_out", TensorProto.FLOAT, [1, 1, 4, 4]))
    assert activations_between(graph_output, ["a", "b"]) == []


def test_int8_may_take_a_block_from_its_second_convolution_to_its_last(tmp_path, mask):
    """The first (1 -> 8) stays fp32, where ONNX Runtime's QLinearConv is slower; the last, as grouped conv +
    channel sum, may be INT8: its grouped weights are an initializer, and its output is quantized too."""
    model = tiny_model("d3c2")
    graph = onnx.load(str(export(tmp_path, mask, "fp32", model).path))
    reasons = {layer.label: layer.fp32_reason for layer in conv_layers(graph, model)}
    assert [label for label, reason in reasons.items() if not reason] == [
        f"cascade {c} conv {k}" for c in (1, 2) for k in ("2 (8->8)", "3 (8->1, grouped)", "3 (8->1, channel sum)")]
    assert "first convolution" in reasons["cascade 2 conv 1 (1->8)"]
    initializers = {init.name for init in graph.graph.initializer}
    grouped = [node for node in graph.graph.node if node.op_type == "Conv" and node.attribute
               and any(a.name == "group" and a.i > 1 for a in node.attribute)]
    assert len(grouped) == 2 and all(node.input[1] in initializers for node in grouped)


def test_a_two_output_grouped_convolution_stays_fp32():
    """Complex images: two outputs per group is not ONNX Runtime's depthwise INT8 kernel."""
    grouped = ConvLayer("g", 1, 3, 8, 2, "grouped")
    assert "not ONNX Runtime's depthwise INT8 kernel" in grouped.fp32_reason
    assert ConvLayer("g", 1, 3, 8, 1, "grouped").int8_eligible
    assert ConvLayer("s", 1, 3, 8, 2, "channel sum").int8_eligible


def test_two_int8_convolutions_meet_without_a_requantization(tmp_path, mask):
    """d3c2: conv 2 -> Relu -> conv 3 (grouped -> channel sum), all INT8: the Relu folded into conv 2's range, no
    DequantizeLinear -> QuantizeLinear pair, and ONNX Runtime runs each block as three QLinearConv back to back,
    dequantizing only the block's one-channel output."""
    result = export(tmp_path, mask, "int8", model=tiny_model("d3c2"), max_psnr_loss=10.0)
    graph = onnx.load(str(result.path))
    producer = {out: node for node in graph.graph.node for out in node.output}
    requantized = [node.name for node in graph.graph.node if node.op_type == "QuantizeLinear"
                   and getattr(producer.get(node.input[0]), "op_type", "") == "DequantizeLinear"]
    assert requantized == []
    assert sum(node.op_type == "Relu" for node in graph.graph.node) == 2  # only those after the fp32 first conv
    assert len(open_exported(result.path, "cpu").metadata.quantization.int8_nodes) == 6
    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    onnxruntime.InferenceSession(str(result.path), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(options.optimized_model_filepath)
    by_output = {out: node for node in optimized.graph.node for out in node.output}
    qlinear = [node for node in optimized.graph.node if node.op_type == "QLinearConv"]
    assert len(qlinear) == 6 and sum(by_output[node.input[0]].op_type == "QLinearConv" for node in qlinear) == 4
    assert "Conv" in {node.op_type for node in optimized.graph.node}  # the first convolutions, fp32


# --- INT8 ------------------------------------------------------------------------------------------------------

def test_int8_export_of_a_tiny_model_records_how_it_was_made(int8_result):
    result = int8_result
    assert result.path.name == "tiny.int8.onnx" and result.precision == "int8"
    metadata = open_exported(result.path, "cpu").metadata
    quantization = metadata.quantization
    assert metadata.precision is Precision.INT8 and quantization.settings.quant_format == "QDQ"
    assert quantization.settings.per_channel
    assert quantization.calibration.to_json() == {"method": "minmax", "slices": 2, "source": "the validation slices"}
    # A bound of 10 dB takes every convolution INT8 may take: of the 4 Conv nodes, both halves of each block's last
    # (8->1 as grouped conv + channel sum); each block's first (1->8) stays fp32 and says why.
    assert len(quantization.int8_nodes) == 4
    kept = {layer.layer: layer for layer in quantization.layers if not layer.int8}
    assert list(kept) == ["cascade 1 conv 1 (1->8)", "cascade 2 conv 1 (1->8)"]
    assert "first convolution" in kept["cascade 2 conv 1 (1->8)"].reason
    assert set(metadata.int8_speed.to_json()) >= {"speedup", "pays", "cpu", "verdict"}
    assert metadata.int8_speed.verdict.startswith(("INT8 pays for d2c2", "INT8 does not pay for d2c2"))
    assert metadata.cpu.instruction_sets is not None
    check = result.precision_check
    assert check.quality.psnr_loss <= 10.0 and check.reference_parity is not None and check.reference_parity < 5e-2
    assert quantization.qat == QatRecord(0.1, 100, None)  # PTQ lost < 0.1 dB
    assert quantization.qat.to_json() == {"threshold_db": 0.1, "max_steps": 100, "run": False}
    assert all(layer.reason for layer in quantization.layers)  # a reason for every layer, INT8 ones included


def test_qat_fake_quantizes_weights_as_onnx_runtime_quantizes_them(int8_result):
    from onnx import numpy_helper

    from compressor.export.precision.qat import _FakeQuantizedWeight

    model, result = tiny_model(), int8_result
    initializers = {init.name: numpy_helper.to_array(init) for init in onnx.load(str(result.path)).graph.initializer}
    # The block's last conv (8 -> 1), INT8 as its grouped form: one filter per input channel, each scaled alone.
    (name,) = [name for name in initializers if name.endswith("grouped_weights_quantized")][:1]
    name = name.removesuffix("_quantized")
    scale = initializers[f"{name}_scale"][:, None, None, None]
    onnx_runtime = initializers[f"{name}_quantized"].astype(np.float32) * scale
    levels = 64 if open_exported(result.path, "cpu").metadata.quantization.settings.reduce_range else 127
    weight = model.cascades[0].block.conv2.weight.detach()
    fake = _FakeQuantizedWeight(levels, grouped=True)(weight).transpose(0, 1).reshape(-1, 1, 3, 3).numpy()
    assert np.abs(initializers[f"{name}_quantized"]).max() == levels  # symmetric, the largest weight at the edge
    np.testing.assert_allclose(fake, onnx_runtime, rtol=0, atol=1e-7)


def test_qat_input_ranges_are_the_global_min_max_of_the_training_batches_as_minmax_calibration_takes_them():
    import torch

    from compressor.export.precision.qat import _FakeQuantizedInput

    hook, conv = _FakeQuantizedInput(), torch.nn.Conv2d(1, 1, 1).train()
    for batch in ([-1.0, 2.0], [-3.0, 0.5], [0.2, 1.0]):
        hook(conv, (torch.tensor(batch),))
    assert (hook.low.item(), hook.high.item()) == (-3.0, 2.0)  # not a moving average of the batches' ranges
    conv.eval()
    (quantized,) = hook(conv, (torch.tensor([0.7, -10.0]),))
    assert (hook.low.item(), hook.high.item()) == (-3.0, 2.0)  # eval mode keeps the range
    # ONNX Runtime's asymmetric int8 MinMax: scale = (2 - -3) / 255, zero point round(-128 + 3 / scale) = 25;
    # 0.7 -> round(35.7) = 36 steps; -10 clips to -128 - 25 = -153 steps.
    scale = 5 / 255
    np.testing.assert_allclose(quantized.numpy(), [36 * scale, -153 * scale], rtol=1e-6)


def test_a_quantization_aware_fine_tuning_is_tried_when_ptq_loses_more_than_the_threshold(tmp_path, mask):
    result = export(tmp_path, mask, "int8", max_psnr_loss=10.0, qat_threshold=-1.0, qat_steps=12)
    qat = open_exported(result.path, "cpu").metadata.quantization.qat
    assert qat.run.steps == 12 and qat.threshold_db == -1.0
    figures = [qat.run.l1_first, qat.run.l1_last, qat.run.qat_psnr_loss]
    assert np.isfinite(figures).all()
    assert qat.run.used is False  # PTQ already quantized every convolution: nothing to gain


def test_the_qdq_graph_keeps_the_df_fp32_and_the_sampled_lines_exact(tmp_path, mask):
    model = tiny_model(options=COMPLEX)
    result = export(tmp_path, mask, "int8", model=model, max_psnr_loss=10.0)
    quantized = onnx.load(str(result.path))
    producer = {out: node for node in quantized.graph.node for out in node.output}
    scopes = data_fidelity_scopes(quantized)  # the exporter's module scopes, kept on the quantized file's nodes
    assert set(scopes.values()) == {"line_projection", "cascades.0.data_fidelity", "cascades.1.data_fidelity"}
    df_nodes = set(scopes)
    for node in quantized.graph.node:
        sources = [producer[name] for name in node.input if name in producer]
        if node.name in df_nodes:  # no DQ feeds the DF, the projection or the normalised x_u it reads
            assert all(source.op_type != "DequantizeLinear" for source in sources), node.name
        if node.op_type == "QuantizeLinear":  # no Q reads the projection
            assert all(source.op_type != "MatMul" for source in sources), node.name
    # NumPy oracle: the complex model's output keeps every measured sample, F(image * scale) = y on the mask.
    kspace = phantom_kspace(mask, 3, image_channels=2)
    image, scale = open_exported(result.path, "cpu").run(kspace, mask.values)
    measured = np.fft.fft2(image * scale[:, None, None], norm="ortho")
    sampled = mask.values != 0
    assert np.max(np.abs(measured[:, sampled] - kspace[:, sampled])) < 1e-5 * np.abs(kspace).max()
    assert result.precision_check.line_deviation < 1e-5


def test_an_export_over_the_psnr_bound_fails_saying_by_how_much_and_leaves_nothing(tmp_path, mask):
    # A negative bound no file can meet: the fp32-equal file (nothing quantized) loses 0 dB, 0.5 dB over it.
    with pytest.raises(ExportValidationError) as raised:
        export(tmp_path, mask, "int8", max_psnr_loss=-0.5)
    (failure,) = [f for f in raised.value.failures if isinstance(f, QualityLossError)]
    assert "exceeds the bound -0.5 dB by 0.500 dB" in str(failure) and "\n" not in str(raised.value)
    assert list(tmp_path.iterdir()) == []


# --- fp16 ------------------------------------------------------------------------------------------------------

def test_fp16_inputs_and_outputs_stay_float32_and_only_the_blocks_are_fp16(fp16_result):
    result = fp16_result
    graph = onnx.load(str(result.path)).graph
    assert {value.type.tensor_type.elem_type for value in [*graph.input, *graph.output]} == {TensorProto.FLOAT}
    types = {init.name: init.data_type for init in graph.initializer}
    assert types["cascades.0.block.conv1.weight"] == TensorProto.FLOAT16
    dft_matrices = {name for node in graph.node if node.op_type == "MatMul" for name in node.input if name in types}
    assert dft_matrices and {types[name] for name in dft_matrices} == {TensorProto.FLOAT}  # the DF stays fp32
    assert result.precision_check.quality.psnr_loss < 0.05 and result.precision_check.line_deviation < 1e-5
    metadata = open_exported(result.path, "cpu").metadata
    assert "rounding only" in metadata.fp16.cpu_note
    assert metadata.quality.delta_psnr_db == pytest.approx(-result.precision_check.quality.psnr_loss)


# --- metadata and the CLI --------------------------------------------------------------------------------------

def test_precision_metadata_round_trips(fp16_result):
    metadata = open_exported(fp16_result.path, "cpu").metadata
    again = ExportMetadata.from_properties(metadata.to_properties())
    assert again == metadata and again.precision is Precision.FP16
    assert (again.fp16, again.quality, again.origin) == (metadata.fp16, metadata.quality, metadata.origin)
    assert again.fp16.fp16_nodes == metadata.fp16.fp16_nodes


def test_int8_metadata_round_trips_with_its_layer_choice_and_verdict(int8_result):
    metadata = open_exported(int8_result.path, "cpu").metadata
    again = ExportMetadata.from_properties(metadata.to_properties())
    assert again.to_properties() == metadata.to_properties()
    assert again.int8_speed.verdict == metadata.int8_speed.verdict != ""
    assert [layer.int8 for layer in again.quantization.layers] == [layer.int8 for layer in metadata.quantization.layers]


def test_compress_export_precision_writes_one_file_per_precision(tmp_path):
    save_weights(tmp_path / "w.safetensors", tiny_model(options=TINY))
    out = tmp_path / "models" / "tiny.onnx"
    result = CliRunner().invoke(export_command, [
        "--arch", "d2c2", "--weights", str(tmp_path / "w.safetensors"), "--width", "8", "--image-size", str(SIZE[0]),
        "--precision", "fp32,int8", "--calibration-slices", "3", "--max-psnr-loss", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny.int8.onnx", "tiny.onnx"]
    assert "INT8 convolutions:" in result.output and "on this CPU" in result.output
    calibration = open_exported(out.with_name("tiny.int8.onnx"), "cpu").metadata.quantization.calibration
    assert calibration.slices == 3
    assert calibration.source.startswith("Shepp-Logan phantoms")


def test_an_unknown_precision_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(export_command, ["--arch", "d2c2", "--weights", str(tmp_path / "w.safetensors"),
                                                 "--precision", "fp32,int4"])
    assert result.exit_code == 2
    assert result.output.strip() == "Error: unknown precision 'int4'; valid: fp16, fp32, int8 (comma-separated, e.g. " \
                                    "fp32,int8)"


def test_compress_checks_the_precisions_before_anything_trains(tmp_path):
    from compressor.cli import main

    result = CliRunner().invoke(main, ["--precision", "int8,bf16", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "unknown precision 'bf16'" in result.output
    assert not (tmp_path / "run").exists()


def test_a_run_exports_each_precision_measured_on_its_validation_slices(tmp_path):
    import json

    from compressor.export.targets.export import export_run
    from tests.test_export import write_run

    write_run(tmp_path, tiny_model(seed=11))
    results = export_run(tmp_path, targets=precision_targets("fp32,fp16"), log=lambda _: None)
    assert [r.path.name for r in results] == ["sft_kd_at_d2c2@4x.onnx", "sft_kd_at_d2c2@4x.fp16.onnx"]
    listed = json.loads((tmp_path / "exports" / "exports.json").read_text())
    assert [row["precision"] for row in listed] == ["fp32", "fp16"] and "precision_check" not in listed[0]
    assert listed[1]["precision_check"]["slices"] == 5 and listed[1]["tolerance"] is None  # the run's 5 targets
    metadata = open_exported(results[1].path, "cpu").metadata
    assert metadata.origin.name == "sft_kd/at/d2c2@4x" and metadata.precision is Precision.FP16


def test_precision_and_target_are_one_choice(tmp_path):
    result = CliRunner().invoke(export_command, ["--arch", "d2c2", "--weights", str(tmp_path / "w.safetensors"),
                                                 "--precision", "int8", "--target", "onnx-fp16"])
    assert result.exit_code == 2 and "give --precision or --target, not both" in result.output
