"""Distillation stages: the schedules of Algorithm 1 and of the authors' scripts, and what each phase trains."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from compressor.errors import InputError
from compressor.kd import build_kd_loss
from compressor.models import build_model
from compressor.training.objectives import Distillation, TeacherFeatureCache, TrainingPhase, record_features
from compressor.training.pipeline import REFERENCE_KD_EPOCHS, kd_phases
from tests.test_sft import make_batch


def test_joint_schedule_is_one_phase_of_l1_plus_kd():
    assert kd_phases(build_kd_loss("at"), "joint", 40) == [TrainingPhase("joint", 40)]


def test_fsp_gets_its_initialisation_phase_scaled_to_the_stage():
    phases = kd_phases(build_kd_loss("fsp"), "joint", REFERENCE_KD_EPOCHS // 2)
    assert phases == [TrainingPhase("feature", 15, rec_weight=0.0), TrainingPhase("joint", 105)]


def test_factor_transfer_pretrains_its_paraphraser_first():
    phases = kd_phases(build_kd_loss("ft"), "joint", REFERENCE_KD_EPOCHS)
    assert phases[0] == TrainingPhase("paraphraser", 30, pretraining=True) and phases[-1] == TrainingPhase("joint", 240)


def test_authors_two_phase_schedule():
    phases = kd_phases(build_kd_loss("at", mode="authors"), "two-phase", 10, feature_epochs=4)
    assert phases == [TrainingPhase("feature", 4, rec_weight=0.0), TrainingPhase("finetune", 10, kd_weight=0.0)]
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
    objective.start_phase(TrainingPhase("feature", 1, rec_weight=0.0))
    loss = objective.loss(batch)
    assert loss.total.item() == pytest.approx(loss.logged["at"], rel=1e-5)
    assert "kd_to_l1" not in loss.logged


def test_paraphraser_phase_trains_only_the_kd_loss_modules():
    objective = _objective("ft")
    objective.start_phase(TrainingPhase("paraphraser", 1, pretraining=True))
    trainable = {id(p) for p in objective.trainable()}
    assert trainable == {id(p) for p in objective.kd_loss.pretrain_parameters()}
    assert not trainable & {id(p) for p in objective.output_model.parameters()}
    objective.loss(make_batch()).total.backward()
    assert all(p.grad is None for p in objective.output_model.parameters())


def _reorder(batch, order):
    """The slices ``order`` of ``batch``, as a new batch (what another epoch's shuffle would give)."""
    return type(batch)(*(value[order] if hasattr(value, "shape") and value.dim() else [value[i] for i in order]
                         for value in batch))


def _taps(features):
    return [f.middle for f in features]


class _CountingTeacher:
    """Counts the slices the teacher's first block sees (a forward hook on cascade 0's first conv)."""

    def __init__(self, teacher):
        self.slices = 0
        teacher.cascades[0].block.conv1.register_forward_hook(self._count)

    def _count(self, module, inputs, output):
        self.slices += inputs[0].shape[0]


def test_teacher_cache_gives_each_slice_its_own_features_whatever_the_batch_and_runs_the_teacher_once_per_slice():
    teacher = build_model("d3c3").eval()
    batch = make_batch(batch=4)
    counter = _CountingTeacher(teacher)
    cache = TeacherFeatureCache(slices=4, budget_bytes=2**30, log=lambda _: None)
    with torch.no_grad():
        first = cache.lookup(teacher, batch, {"middle"})
        shuffled = cache.lookup(teacher, _reorder(batch, [2, 0, 3, 1]), {"middle"})
        direct = record_features(teacher, batch, {"middle"})
    assert counter.slices == 4 + 4  # once per slice for the cache, then the direct reference
    for cached, again, reference in zip(_taps(first), _taps(shuffled), _taps(direct)):
        assert torch.equal(again, cached[[2, 0, 3, 1]])  # a slice's features do not depend on its batch
        torch.testing.assert_close(cached, reference, rtol=0, atol=1e-5)  # float rounding of another batch size


def test_teacher_cache_over_its_budget_caches_nothing_and_the_loss_is_the_uncached_one():
    logged = []
    cache = TeacherFeatureCache(slices=1000, budget_bytes=1, log=logged.append)
    objective = Distillation(build_model("d2c3"), build_model("d3c3"), build_kd_loss("at", n_cascades=3), 10.0,
                             teacher_cache=cache)
    reference = _objective()
    reference.output_model.load_state_dict(objective.output_model.state_dict())
    reference.teacher.load_state_dict(objective.teacher.state_dict())
    batch = make_batch()
    assert objective.loss(batch).total.item() == reference.loss(batch).total.item()
    assert not cache.enabled and not cache.features
    assert len(logged) == 1 and "not cached" in logged[0] and "1000 slices" in logged[0]


def test_cached_distillation_loss_matches_the_uncached_one_to_float_rounding():
    cached = Distillation(build_model("d2c3"), build_model("d3c3"), build_kd_loss("at", n_cascades=3), 10.0,
                          teacher_cache=TeacherFeatureCache(slices=2, budget_bytes=2**30, log=lambda _: None))
    reference = _objective()
    reference.output_model.load_state_dict(cached.output_model.state_dict())
    reference.teacher.load_state_dict(cached.teacher.state_dict())
    batch = make_batch()
    for _ in range(2):  # the first call fills the cache, the second reads it
        assert cached.loss(batch).total.item() == pytest.approx(reference.loss(batch).total.item(), rel=1e-5)
    assert len(cached.teacher_cache.features) == 2
