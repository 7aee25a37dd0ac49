"""Distillation stages: the schedules of Algorithm 1 and of the authors' scripts, and what each phase trains."""

from __future__ import annotations

import pytest
import torch.nn.functional as F

from compressor.errors import InputError
from compressor.kd import build_kd_loss
from compressor.models import build_model
from compressor.training.objectives import Distillation, Phase
from compressor.training.pipeline import REFERENCE_KD_EPOCHS, kd_phases
from tests.test_sft import make_batch


def test_joint_schedule_is_one_phase_of_l1_plus_kd():
    assert kd_phases(build_kd_loss("at"), "joint", 40) == [Phase("joint", 40)]


def test_fsp_gets_its_initialisation_phase_scaled_to_the_stage():
    phases = kd_phases(build_kd_loss("fsp"), "joint", REFERENCE_KD_EPOCHS // 2)
    assert phases == [Phase("feature", 15, rec_weight=0.0), Phase("joint", 105)]


def test_factor_transfer_pretrains_its_paraphraser_first():
    phases = kd_phases(build_kd_loss("ft"), "joint", REFERENCE_KD_EPOCHS)
    assert phases[0] == Phase("paraphraser", 30, pretraining=True) and phases[-1] == Phase("joint", 240)


def test_authors_two_phase_schedule():
    phases = kd_phases(build_kd_loss("at", mode="authors"), "two-phase", 10, feature_epochs=4)
    assert phases == [Phase("feature", 4, rec_weight=0.0), Phase("finetune", 10, kd_weight=0.0)]
    with pytest.raises(InputError, match="two-phase"):
        kd_phases(build_kd_loss("at"), "cyclic", 10)


def _objective(method: str = "at") -> Distillation:
    return Distillation(build_model("d2c3"), build_model("d3c3"), build_kd_loss(method, n_cascades=3), 10.0)


def test_loss_is_l1_plus_weighted_kd_and_never_trains_the_teacher():
    objective = _objective()
    batch = make_batch()
    loss = objective.loss(batch)
    output = objective.output_model(batch.zero_filled, batch.kspace, batch.mask)
    assert loss.logged["l1"] == pytest.approx(F.l1_loss(output, batch.target).item(), rel=1e-5)
    assert loss.total.item() == pytest.approx(loss.logged["l1"] + loss.logged["at"], rel=1e-5)
    assert loss.logged["kd_to_l1"] == pytest.approx(loss.logged["at"] / loss.logged["l1"], rel=1e-5)
    loss.total.backward()
    assert all(p.grad is None for p in objective.teacher.parameters())
    assert all(p.grad is not None for p in objective.output_model.parameters())


def test_feature_phase_drops_the_reconstruction_term():
    objective = _objective()
    batch = make_batch()
    objective.start_phase(Phase("feature", 1, rec_weight=0.0))
    loss = objective.loss(batch)
    assert loss.total.item() == pytest.approx(loss.logged["at"], rel=1e-5)
    assert "kd_to_l1" not in loss.logged


def test_paraphraser_phase_trains_only_the_kd_loss_modules():
    objective = _objective("ft")
    objective.start_phase(Phase("paraphraser", 1, pretraining=True))
    trainable = {id(p) for p in objective.trainable()}
    assert trainable == {id(p) for p in objective.kd_loss.pretrain_parameters()}
    assert not trainable & {id(p) for p in objective.output_model.parameters()}
    objective.loss(make_batch()).total.backward()
    assert all(p.grad is None for p in objective.output_model.parameters())
