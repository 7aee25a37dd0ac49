"""DC-UNet (``dcunetM``), the heterogeneous teacher of Table 6: parameter count, shapes (odd sizes included), DF,
the interface later stages use, and the feature pairing with a d3c5 student."""

from __future__ import annotations

import pytest
import torch

from compressor.errors import InputError
from compressor.kd import build_kd_loss, record_cascade_features
from compressor.masks import make_mask
from compressor.models import FeatureRecorder, ModelOptions, build_model
from compressor.physics import fft2, ifft2, real_to_pair, undersample, zero_filled


def conv_parameters(in_channels: int, out_channels: int) -> int:
    """A 3×3 conv with bias."""
    return 9 * in_channels * out_channels + out_channels


def unet_parameters(c: int) -> int:
    """conv1 1→c, conv2 c→c, conv3 c→2c, conv4 2c→2c, conv5 (skip c + upsampled 2c)→c, conv6 c→c, conv7 c→1."""
    return (conv_parameters(1, c) + conv_parameters(c, c) + conv_parameters(c, 2 * c) + conv_parameters(2 * c, 2 * c)
            + conv_parameters(3 * c, c) + conv_parameters(c, c) + conv_parameters(c, 1))


def test_parameter_count():
    assert unet_parameters(32) == 320 + 9_248 + 18_496 + 36_928 + 27_680 + 9_248 + 289 == 102_209
    assert build_model("dcunet5").num_parameters() == 5 * 102_209 == 511_045
    assert build_model("dcunet2", ModelOptions(width=8)).num_parameters() == 2 * unet_parameters(8)
    assert build_model("dcunet5", ModelOptions(dc_lambda=2.0, dc_learnable=True)).num_parameters() == 511_050
    assert build_model("dcunet5", ModelOptions(block_form="residual")).num_parameters() == 511_045


def _inputs(size=(16, 16), batch=2):
    target = torch.rand(batch, 1, *size)
    mask = torch.from_numpy(make_mask("random", 4, size, seed=0).values)[None, None]
    kspace = undersample(target, mask)
    return zero_filled(kspace), kspace, mask


@pytest.mark.parametrize("size", [(16, 16), (15, 18), (17, 13)])
@pytest.mark.parametrize("block_form", ["plain", "residual"])
def test_forward_shapes(size, block_form):
    model = build_model("dcunet3", ModelOptions(block_form=block_form, width=8))
    x_u, kspace, mask = _inputs(size)
    run = model.run_cascades(x_u, kspace, mask)
    assert run.image.shape == x_u.shape
    assert [o.shape for o in run.block_outputs + run.cascade_outputs] == [x_u.shape] * 6
    assert torch.equal(model(x_u, kspace, mask), run.image)


def test_odd_sizes_without_block_padding():
    model = build_model("dcunet1", ModelOptions(block_padding=0, width=8))
    x_u, kspace, mask = _inputs((15, 17))
    with FeatureRecorder(model, ["cascades.0.block.relu5"]) as recorder:
        assert model(x_u, kspace, mask).shape == x_u.shape
    assert recorder.features["cascades.0.block.relu5"].shape == (2, 8, 16, 18)


def test_data_fidelity_follows_each_block():
    model = build_model("dcunet2", ModelOptions(width=8))
    x_u, kspace, mask = _inputs((16, 18))
    run = model.run_cascades(x_u, kspace, mask)
    for block_output, output in zip(run.block_outputs, run.cascade_outputs):
        # λ → ∞: the sampled lines of the block output's k-space are replaced by the measurement, real part kept.
        replaced = fft2(real_to_pair(block_output)) * (1 - mask.unsqueeze(-1)) + kspace
        assert torch.allclose(output, ifft2(replaced)[..., 0], atol=1e-6)


def test_residual_block_adds_its_input_and_plain_does_not():
    plain = build_model("dcunet1", ModelOptions(block_form="plain", width=8))
    residual = build_model("dcunet1", ModelOptions(block_form="residual", width=8))
    residual.load_state_dict(plain.state_dict())
    image = torch.rand(1, 1, 15, 18)
    assert torch.allclose(residual.cascades[0].block(image), image + plain.cascades[0].block(image))


def test_run_from_a_middle_cascade_equals_the_full_forward():
    model = build_model("dcunet4", ModelOptions(width=8))
    x_u, kspace, mask = _inputs((15, 18))
    full = model.run_cascades(x_u, kspace, mask)
    tail = model.run_cascades(full.cascade_outputs[1], kspace, mask, start=2)
    assert torch.allclose(tail.image, full.image, atol=1e-6)


def test_d3c5_student_branch_starts_from_a_dcunet_cascade_output():
    teacher, student = build_model("dcunet5", ModelOptions(width=8)), build_model("d3c5")
    x_u, kspace, mask = _inputs()
    teacher_run = teacher.run_cascades(x_u, kspace, mask)
    branch = student.run_cascades(teacher_run.cascade_outputs[1], kspace, mask, start=2)
    assert branch.image.shape == x_u.shape and len(branch.cascade_outputs) == 3


@pytest.mark.parametrize("size, full", [((16, 16), (26, 26)), ((15, 18), (26, 28))])
def test_hidden_layers_in_order_with_their_resolutions(size, full):
    model = build_model("dcunet2")
    assert model.hidden_layers(1) == [f"cascades.1.block.relu{k}" for k in range(1, 7)]
    x_u, kspace, mask = _inputs(size)
    with FeatureRecorder(model, model.hidden_layers(1)) as recorder:
        model(x_u, kspace, mask)
    half = (full[0] // 2, full[1] // 2)
    expected = [(32, *full), (32, *full), (64, *half), (64, *half), (32, *full), (32, *full)]
    assert [tuple(recorder.features[p].shape[1:]) for p in model.hidden_layers(1)] == expected


def test_paired_layer_is_relu5_with_d3c5s_channels_and_size():
    teacher, student = build_model("dcunet5"), build_model("d3c5")
    assert [teacher.distillation_layer(i) for i in range(5)] == [f"cascades.{i}.block.relu5" for i in range(5)]
    x_u, kspace, mask = _inputs()
    with FeatureRecorder(teacher, [teacher.distillation_layer(0)]) as t, \
            FeatureRecorder(student, [student.distillation_layer(0)]) as s:
        teacher(x_u, kspace, mask)
        student(x_u, kspace, mask)
    assert t.features["cascades.0.block.relu5"].shape == s.features["cascades.0.block.relu2"].shape == (2, 32, 26, 26)


@pytest.mark.parametrize("size", [(16, 16), (15, 18)])
@pytest.mark.parametrize("method", ["at", "fitnets", "sp", "pkt", "nst", "ft", "cc", "fsp"])
def test_every_feature_kd_loss_pairs_dcunet5_with_d3c5(method, size):
    teacher, student = build_model("dcunet5", ModelOptions(width=32)), build_model("d3c5")
    loss = build_kd_loss(method, channels=(32, 32), n_cascades=5)
    x_u, kspace, mask = _inputs(size)

    taps = loss.required_taps()
    value = loss(record_cascade_features(student, x_u, kspace, mask, taps),
                 record_cascade_features(teacher, x_u, kspace, mask, taps))
    assert value.shape == () and torch.isfinite(value)


@pytest.mark.parametrize("name", ["dcunet0", "dcunet", "dcunet5x"])
def test_bad_names_show_the_valid_forms(name):
    with pytest.raises(InputError, match="dcunetM"):
        build_model(name)
