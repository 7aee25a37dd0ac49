"""Feature-domain block networks: VDSR (``vdsrN``, super-resolution) and the residual CNN of the
feature-domain SFT ablation (``rcnnL``): parameter counts, block split, the carried input, hidden layers, names."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compressor.errors import InputError
from compressor.kd import build_kd_loss, record_cascade_features
from compressor.models import FeatureRecorder, ModelOptions, build_model


def conv_parameters(in_channels: int, out_channels: int) -> int:
    """A 3×3 conv with bias."""
    return 9 * in_channels * out_channels + out_channels


@pytest.mark.parametrize("arch, expected", [
    ("vdsr12", conv_parameters(1, 64) + 10 * conv_parameters(64, 64) + conv_parameters(64, 1)),
    ("vdsr4", conv_parameters(1, 64) + 2 * conv_parameters(64, 64) + conv_parameters(64, 1)),
    ("rcnn25", conv_parameters(1, 32) + 23 * conv_parameters(32, 32) + conv_parameters(32, 1)),
    ("rcnn15", conv_parameters(1, 32) + 13 * conv_parameters(32, 32) + conv_parameters(32, 1)),
])
def test_parameter_counts(arch, expected):
    assert build_model(arch).num_parameters() == expected


def test_parameter_counts_by_hand():
    assert build_model("vdsr12").num_parameters() == 640 + 10 * 36_928 + 577 == 370_497
    assert build_model("vdsr4").num_parameters() == 75_073
    assert build_model("rcnn25").num_parameters() == 320 + 23 * 9_248 + 289 == 213_313
    assert build_model("rcnn15").num_parameters() == 120_833


def test_rcnn_width_follows_the_channels_option_and_vdsr_keeps_64():
    assert build_model("rcnn15", ModelOptions(width=8)).num_parameters() == 80 + 13 * 584 + 73
    assert build_model("vdsr4", ModelOptions(width=8)).num_parameters() == 75_073


def _convs_per_block(model) -> list[int]:
    return [sum(isinstance(m, nn.Conv2d) for m in cascade.block.modules()) for cascade in model.cascades]


@pytest.mark.parametrize("arch, blocks", [
    ("vdsr12", [3, 3, 3, 3]), ("vdsr4", [1, 1, 1, 1]), ("vdsr10", [3, 3, 2, 2]),
    ("rcnn25", [5, 5, 5, 5, 5]), ("rcnn15", [3, 3, 3, 3, 3]), ("rcnn7", [2, 2, 1, 1, 1]),
])
def test_block_split(arch, blocks):
    model = build_model(arch)
    assert _convs_per_block(model) == blocks
    assert all(cascade.data_fidelity is None for cascade in model.cascades)


def _unsplit_network_output(model, image: torch.Tensor, skip_blocks: set[int]) -> torch.Tensor:
    """The same weights run as one chain: ReLU after every conv but the last, the global residual, and for the
    blocks in ``skip_blocks`` (ResNet units) the block's input added before its last ReLU."""
    x = image
    for index, cascade in enumerate(model.cascades):
        convs = [m for m in cascade.block.modules() if isinstance(m, nn.Conv2d)]
        block_input = x
        for k, conv in enumerate(convs):
            x = conv(x)
            if index in skip_blocks and k == len(convs) - 1:
                x = x + block_input
            if not (index == model.n_cascades - 1 and k == len(convs) - 1):
                x = F.relu(x)
    return image + x


@pytest.mark.parametrize("arch, skip_blocks", [("vdsr12", set()), ("vdsr4", set()), ("vdsr10", set()),
                                                ("rcnn15", {1, 2, 3}), ("rcnn7", {1, 2, 3})])
@pytest.mark.parametrize("size", [(16, 16), (15, 18)])
def test_split_network_computes_the_unsplit_residual_cnn(arch, skip_blocks, size):
    torch.manual_seed(0)
    model = build_model(arch)
    image = torch.rand(2, 1, *size)
    output = model(image, torch.zeros(2, 1, *size, 2), torch.ones(1, 1, *size))
    assert output.shape == (2, 1, *size)
    assert torch.allclose(output, _unsplit_network_output(model, image, skip_blocks), atol=1e-6)


def test_rcnn_middle_blocks_are_resnet_units_and_vdsr_is_a_plain_chain():
    rcnn, vdsr = build_model("rcnn15"), build_model("vdsr12")
    assert [cascade.block.skip for cascade in rcnn.cascades] == [False, True, True, True, False]
    assert not any(cascade.block.skip for cascade in vdsr.cascades)
    # A middle block whose convs output zero passes its input through (relu of non-negative features).
    block = rcnn.cascades[2].block
    for conv in (block.conv1, block.conv2, block.conv3):
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
    state = torch.cat((torch.rand(1, 1, 8, 8), torch.rand(1, 32, 8, 8)), dim=1)
    assert torch.equal(block(state), state)


def test_kspace_and_mask_are_ignored():
    model = build_model("vdsr4")
    image = torch.rand(1, 1, 16, 16)
    a = model(image, torch.zeros(1, 1, 16, 16, 2), torch.zeros(1, 1, 16, 16))
    b = model(image, torch.rand(1, 1, 16, 16, 2), torch.ones(1, 1, 16, 16))
    assert torch.equal(a, b)


@pytest.mark.parametrize("arch, channels", [("vdsr12", 64), ("rcnn15", 32)])
def test_blocks_pass_the_input_image_in_channel_0_and_features_after_it(arch, channels):
    model = build_model(arch)
    image = torch.rand(2, 1, 15, 18)
    run = model.run_cascades(image, torch.zeros(2, 1, 15, 18, 2), torch.ones(1, 1, 15, 18))
    for state in run.cascade_outputs[:-1]:
        assert state.shape == (2, 1 + channels, 15, 18)
        assert torch.equal(state[:, :1], image)
    assert run.image.shape == (2, 1, 15, 18)
    assert run.block_outputs == run.cascade_outputs  # no DF


@pytest.mark.parametrize("arch", ["vdsr12", "vdsr4", "rcnn25"])
def test_run_from_a_middle_block_equals_the_full_forward(arch):
    model = build_model(arch)
    image, kspace, mask = torch.rand(2, 1, 16, 16), torch.zeros(2, 1, 16, 16, 2), torch.ones(1, 1, 16, 16)
    full = model.run_cascades(image, kspace, mask)
    for start in range(1, model.n_cascades):
        tail = model.run_cascades(full.cascade_outputs[start - 1], kspace, mask, start=start)
        assert len(tail.cascade_outputs) == model.n_cascades - start
        assert torch.allclose(tail.image, full.image, atol=1e-6)


def test_sft_branch_from_the_teacher_adds_the_original_input():
    teacher, student = build_model("vdsr12"), build_model("vdsr4")
    image, kspace, mask = torch.rand(2, 1, 16, 16), torch.zeros(2, 1, 16, 16, 2), torch.ones(1, 1, 16, 16)
    last = student.cascades[-1].block.conv1
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    teacher_run = teacher.run_cascades(image, kspace, mask)
    for i in range(1, teacher.n_cascades):
        # The trainer's call: student blocks i.. from the teacher's block i-1 output; a zero residual leaves the input.
        branch = student.run_cascades(teacher_run.cascade_outputs[i - 1], kspace, mask, start=i)
        assert torch.equal(branch.image, image)


@pytest.mark.parametrize("arch, middles", [
    ("vdsr12", ["relu2", "relu2", "relu2", "relu2"]),
    ("vdsr4", ["relu1", "relu1", "relu1", "block_input"]),
    ("rcnn25", ["relu3"] * 5),
    ("rcnn15", ["relu2"] * 5),
])
def test_distillation_layers(arch, middles):
    model = build_model(arch)
    assert [model.distillation_layer(i) for i in range(model.n_cascades)] == [
        f"cascades.{i}.block.{name}" for i, name in enumerate(middles)]


def test_hidden_layers_are_block_relus_in_order():
    model = build_model("vdsr12")
    assert model.hidden_layers(0) == [f"cascades.0.block.relu{k}" for k in (1, 2, 3)]
    assert model.hidden_layers(3) == ["cascades.3.block.relu1", "cascades.3.block.relu2"]


@pytest.mark.parametrize("arch, channels", [("vdsr12", 64), ("vdsr4", 64), ("rcnn15", 32)])
def test_hidden_layers_resolve_through_the_feature_recorder(arch, channels):
    model = build_model(arch)
    paths = [path for i in range(model.n_cascades) for path in model.hidden_layers(i)]
    image = torch.rand(2, 1, 15, 18)
    with FeatureRecorder(model, paths) as recorder:
        model(image, torch.zeros(2, 1, 15, 18, 2), torch.ones(1, 1, 15, 18))
    assert set(recorder.features) == set(paths)
    assert all(f.shape == (2, channels, 15, 18) for f in recorder.features.values())


def test_vdsr4_last_block_tap_is_the_features_entering_it():
    model = build_model("vdsr4")
    paths = ["cascades.2.block.relu1", "cascades.3.block.block_input"]
    with FeatureRecorder(model, paths) as recorder:
        model(torch.rand(1, 1, 16, 16), torch.zeros(1, 1, 16, 16, 2), torch.ones(1, 1, 16, 16))
    assert torch.equal(recorder.features[paths[0]], recorder.features[paths[1]])


@pytest.mark.parametrize("method", ["at", "fitnets", "sp", "pkt", "nst", "ft", "cc", "fsp"])
def test_every_feature_kd_loss_pairs_vdsr4_with_vdsr12(method):
    teacher, student = build_model("vdsr12"), build_model("vdsr4")
    loss = build_kd_loss(method, channels=(64, 64), n_cascades=4)
    image, kspace, mask = torch.rand(2, 1, 15, 18), torch.zeros(2, 1, 15, 18, 2), torch.ones(1, 1, 15, 18)

    taps = loss.required_taps()
    value = loss(record_cascade_features(student, image, kspace, mask, taps),
                 record_cascade_features(teacher, image, kspace, mask, taps))
    assert value.shape == () and torch.isfinite(value)


@pytest.mark.parametrize("name, form", [
    ("vdsr1", "vdsrN"), ("vdsr3", "vdsrN"), ("rcnn3", "rcnnL"), ("rcnn4", "rcnnL"),
])
def test_too_few_layers_for_the_blocks(name, form):
    with pytest.raises(InputError, match=form):
        build_model(name)


@pytest.mark.parametrize("name", ["vdsr", "vdsr4x", "rcnn", "resnet18"])
def test_unknown_names_list_every_family(name):
    with pytest.raises(InputError) as error:
        build_model(name)
    assert all(form in str(error.value) for form in ("dNcM", "dcunetM", "vdsrN", "rcnnL"))


def test_architecture_name_is_recorded():
    assert build_model(" VDSR12 ").arch == "vdsr12"
    assert build_model("rcnn15").arch == "rcnn15"
