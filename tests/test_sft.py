"""Student-friendly teacher training (eqs. 3-5, Fig. 2): branch wiring, gradient flow, stage-5 initialisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from compressor.data.sample import Sample
from compressor.masks import make_mask
from compressor.models import build_model
from compressor.physics import undersample, zero_filled
from compressor.training.objectives import SFTWeights, StudentFriendlyTeacher, Supervised
from compressor.training.pipeline import transfer_student_blocks


def make_batch(size: int = 16, batch: int = 2) -> Sample:
    target = torch.rand(batch, 1, size, size)
    mask = torch.from_numpy(make_mask("random", 4, (size, size), seed=0).values)[None, None].expand(batch, 1, -1, -1)
    kspace = undersample(target, mask)
    return Sample(zero_filled(kspace), kspace, mask, target, torch.ones(batch), ["v"] * batch, torch.arange(batch))


def grads(module: torch.nn.Module) -> dict[str, bool]:
    """Which cascades' blocks received a non-zero gradient."""
    received = {}
    for name, p in module.named_parameters():
        cascade = int(name.split(".")[1])
        received[cascade] = received.get(cascade, False) or (p.grad is not None and p.grad.abs().sum().item() > 0)
    return received


@pytest.fixture
def sft() -> StudentFriendlyTeacher:
    return StudentFriendlyTeacher(build_model("d3c4"), build_model("d2c4"), SFTWeights())


def test_branch_i_starts_from_teacher_cascade_i_and_runs_the_remaining_student_blocks(sft):
    batch = make_batch()
    teacher_image, branches = sft.branch_outputs(batch)
    assert len(branches) == 3  # N - 1 branches for N = 4 cascades
    run = sft.output_model.run_cascades(batch.zero_filled, batch.kspace, batch.mask)
    for i, branch in enumerate(branches, start=1):
        expected = sft.student_branches.run_cascades(run.cascade_outputs[i - 1], batch.kspace, batch.mask, start=i)
        assert torch.allclose(branch, expected.image)
    assert torch.allclose(teacher_image, run.image)


def test_loss_is_eqs_3_to_5_with_their_weights(sft):
    batch = make_batch()
    sft.weights = SFTWeights(teacher=2.0, student=3.0, imitation=5.0)
    terms = sft.loss(batch)
    teacher_image, branches = sft.branch_outputs(batch)
    l_t = F.l1_loss(teacher_image, batch.target)
    l_s = sum(F.l1_loss(b, batch.target) for b in branches) / 3
    l_i = sum(F.l1_loss(b, teacher_image) for b in branches) / 3
    assert terms.total.item() == pytest.approx((2 * l_t + 3 * l_s + 5 * l_i).item(), rel=1e-5)
    assert terms.logged["imitation"] == pytest.approx(l_i.item(), rel=1e-5)


def test_authors_imitation_is_divided_by_the_pixel_count(sft):
    batch = make_batch()
    plain = sft.loss(batch).logged["imitation"]
    sft.weights = SFTWeights(imitation_per_pixel=True)
    assert sft.loss(batch).logged["imitation"] == pytest.approx(plain / 256, rel=1e-5)


def test_student_branch_loss_reaches_teacher_blocks_1_to_n_minus_1_and_student_blocks_2_to_n_not_s1(sft):
    batch = make_batch()
    sft.weights = SFTWeights(teacher=0.0, student=1.0, imitation=0.0)
    sft.loss(batch).total.backward()
    assert grads(sft.output_model) == {0: True, 1: True, 2: True, 3: False}  # T_N feeds no branch
    assert grads(sft.student_branches) == {0: False, 1: True, 2: True, 3: True}  # S_1 is in no branch


def test_teacher_loss_reaches_no_student_block(sft):
    batch = make_batch()
    sft.weights = SFTWeights(teacher=1.0, student=0.0, imitation=0.0)
    sft.loss(batch).total.backward()
    assert all(grads(sft.output_model).values())
    assert not any(grads(sft.student_branches).values())


def test_imitation_term_trains_both_teacher_and_branches(sft):
    batch = make_batch()
    sft.weights = SFTWeights(teacher=0.0, student=0.0, imitation=1.0)
    sft.loss(batch).total.backward()
    assert grads(sft.output_model)[3]  # the teacher's last block, through x_T in eq. (5)
    assert grads(sft.student_branches)[3]


def test_stage_5_student_takes_sft_blocks_2_to_n_and_keeps_a_fresh_first_block():
    branches, student = build_model("d3c5"), build_model("d3c5")
    fresh_first = {k: v.clone() for k, v in student.state_dict().items() if k.startswith("cascades.0.")}
    copied = transfer_student_blocks(branches, student)
    assert copied and all(not k.startswith("cascades.0.") for k in copied)
    state, source = student.state_dict(), branches.state_dict()
    for key, value in state.items():
        expected = fresh_first[key] if key.startswith("cascades.0.") else source[key]
        assert torch.equal(value, expected), key


def test_supervised_objective_is_plain_l1():
    model = build_model("d2c2")
    batch = make_batch()
    terms = Supervised(model).loss(batch)
    assert terms.total.item() == pytest.approx(F.l1_loss(model(batch.zero_filled, batch.kspace, batch.mask),
                                                         batch.target).item())
