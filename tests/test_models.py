"""DC-CNN models: exact parameter counts (Table 8), names, block forms, the interface later stages use."""

from __future__ import annotations

import pytest
import torch

from compressor.errors import InputError
from compressor.masks import make_mask
from compressor.models import FeatureRecorder, ModelOptions, build_model
from compressor.physics import undersample, zero_filled

PAPER_PARAMETERS = {"d5c5": 141_765, "d4c5": 95_525, "d3c5": 49_285, "d2c5": 3_045}


@pytest.mark.parametrize("arch, expected", PAPER_PARAMETERS.items())
@pytest.mark.parametrize("block_form", ["plain", "residual"])
def test_parameter_counts_match_table_8(arch, expected, block_form):
    assert build_model(arch, ModelOptions(block_form=block_form)).num_parameters() == expected


def test_parameter_count_formula_for_any_dncm():
    # per block: conv(1→32) 320 + (N−2)·conv(32→32) 9248 + conv(32→1) 289
    for n in range(2, 7):
        for m in (1, 3, 10):
            assert build_model(f"d{n}c{m}").num_parameters() == m * (320 + (n - 2) * 9248 + 289)


def test_learnable_lambda_adds_one_parameter_per_cascade_only_when_asked():
    assert build_model("d3c5", ModelOptions(dc_lambda=5.0)).num_parameters() == 49_285
    assert build_model("d3c5", ModelOptions(dc_lambda=5.0, dc_learnable=True)).num_parameters() == 49_290


@pytest.mark.parametrize("name", ["d1c5", "x3c5", "d3c0", "d3", "", "d3c5x"])
def test_invalid_names_show_the_valid_form(name):
    with pytest.raises(InputError, match=r"dNcM"):
        build_model(name)


def _inputs(size=24, batch=2):
    target = torch.rand(batch, 1, size, size)
    mask = torch.from_numpy(make_mask("random", 4, (size, size), seed=0).values)[None, None]
    kspace = undersample(target, mask)
    return zero_filled(kspace), kspace, mask


@pytest.mark.parametrize("block_form", ["plain", "residual"])
def test_forward_shapes_and_record(block_form):
    model = build_model("d3c4", ModelOptions(block_form=block_form))
    x_u, kspace, mask = _inputs()
    out = model.run_cascades(x_u, kspace, mask)
    assert out.image.shape == x_u.shape
    assert len(out.block_outputs) == len(out.cascade_outputs) == 4
    assert torch.equal(out.image, out.cascade_outputs[-1])
    assert torch.equal(model(x_u, kspace, mask), out.image)
    assert model.options.block_form == block_form and model.arch == "d3c4"


def test_residual_block_adds_its_input_and_plain_does_not():
    plain = build_model("d2c1", ModelOptions(block_form="plain"))
    residual = build_model("d2c1", ModelOptions(block_form="residual"))
    residual.load_state_dict(plain.state_dict())
    image = torch.rand(1, 1, 16, 16)
    assert torch.allclose(residual.cascades[0].block(image), image + plain.cascades[0].block(image))


def test_zero_padding_of_five_only_changes_borders():
    padded = build_model("d3c1", ModelOptions(block_padding=5))
    unpadded = build_model("d3c1", ModelOptions(block_padding=0))
    unpadded.load_state_dict(padded.state_dict())
    image = torch.rand(1, 1, 32, 32)
    a, b = padded.cascades[0].block(image), unpadded.cascades[0].block(image)
    assert torch.allclose(a[..., 3:-3, 3:-3], b[..., 3:-3, 3:-3], atol=1e-6)


def test_run_subset_of_cascades_continues_from_a_given_image():
    model = build_model("d2c5")
    x_u, kspace, mask = _inputs()
    full = model.run_cascades(x_u, kspace, mask)
    tail = model.run_cascades(full.cascade_outputs[1], kspace, mask, start=2)
    assert len(tail.cascade_outputs) == 3
    assert torch.allclose(tail.image, full.image)
    with pytest.raises(ValueError):
        model.run_cascades(x_u, kspace, mask, start=4, stop=2)


def test_hidden_features_by_name():
    model = build_model("d5c2")
    assert model.hidden_layers(1) == [f"cascades.1.block.relu{k}" for k in range(1, 5)]
    assert [build_model(a).distillation_layer(0).rsplit(".", 1)[-1] for a in ("d5c5", "d4c5", "d3c5", "d2c5")] == [
        "relu3", "relu2", "relu2", "relu1"]
    x_u, kspace, mask = _inputs(size=16)
    with FeatureRecorder(model, [model.distillation_layer(0), model.distillation_layer(1)]) as recorder:
        model(x_u, kspace, mask)
    feature = recorder.features["cascades.0.block.relu3"]
    assert feature.shape == (2, 32, 16 + 10, 16 + 10)  # hidden maps include the 5-pixel block padding
    assert (feature >= 0).all()
    with pytest.raises(KeyError, match="no module"):
        FeatureRecorder(model, ["cascades.0.block.relu9"])


def test_swapping_the_fourier_operator_keeps_the_output():
    from compressor.physics import MatmulDFT

    model = build_model("d2c3")
    x_u, kspace, mask = _inputs(size=20)
    reference = model(x_u, kspace, mask)
    model.fourier = MatmulDFT(20, 20)
    assert torch.allclose(model(x_u, kspace, mask), reference, atol=1e-5)
    assert "fourier" not in "".join(model.state_dict())


def test_the_width_keeps_its_json_key_channels_so_old_stage_records_and_exports_still_load():
    import json
    from pathlib import Path

    import onnx

    fixture = Path(__file__).parent / "fixtures" / "exports_v1" / "student_d2c5@4x.onnx"
    metadata = {p.key: p.value for p in onnx.load(str(fixture), load_external_data=False).metadata_props}
    written = json.loads(metadata["model_options"])  # what every stage.json and export before the rename holds
    assert ModelOptions.from_dict(written) == ModelOptions(width=32)
    assert json.dumps(ModelOptions().to_dict()) == metadata["model_options"]  # same keys, same order
    old_stage = {"block_form": "residual", "block_padding": 5, "dc_lambda": None, "dc_learnable": False,
                 "channels": 8}  # a stage.json from before image channels existed
    assert ModelOptions.from_dict(old_stage) == ModelOptions(block_form="residual", width=8)
    assert build_model("d2c2", ModelOptions.from_dict(old_stage)).width == 8
    with pytest.raises(InputError, match="model options: unknown key 'depth'; known keys: block_form"):
        ModelOptions.from_dict({"depth": 3}, "stage.json")
