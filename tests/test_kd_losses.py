"""Specification of the KD losses (compressor.kd): each formula against values computed by hand or with explicit
NumPy arithmetic on tiny tensors, plus the contract the trainer relies on (registry, modes, cascades, taps,
gradients, phases, composite loss)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from compressor.errors import InputError
from compressor.kd import (
    KD_LOSSES,
    CascadeFeatures,
    CompositeLoss,
    DistillationLoss,
    build_kd_loss,
    cascade_features,
    tap_module_paths,
    weight_balance,
)
from compressor.models import build_model, count_parameters

torch.set_num_threads(1)

ALL_MODES = [(name, mode) for name in KD_LOSSES for mode in KD_LOSSES.get(name).modes]
REPDISTILLER_WEIGHTS = {"at": 1000, "fitnets": 100, "sp": 3000, "cc": 0.02, "fsp": 50, "pkt": 30000, "ft": 200,
                        "nst": 50}


def t64(values) -> torch.Tensor:
    return torch.tensor(np.asarray(values, dtype=np.float64))


def one_cascade(**taps) -> list[CascadeFeatures]:
    return [CascadeFeatures(**{name: t64(value) for name, value in taps.items()})]


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# Deterministic, non-negative (like ReLU outputs), non-constant tiny features: B=2, C=2, 2×2 maps.
STUDENT = np.arange(1.0, 17.0).reshape(2, 2, 2, 2) % 5 + 0.5
TEACHER = (np.arange(16.0).reshape(2, 2, 2, 2) * 7) % 6 + 0.25


# --- AT ---------------------------------------------------------------------------------------------------------

def test_at_paper_closed_form():
    # Q_s = [1, 0] -> unit [1, 0]; Q_t = [1, 1] -> [1/√2, 1/√2]; mean of squared differences = 1 - 1/√2.
    loss = build_kd_loss("at", n_cascades=1)
    value = loss(one_cascade(middle=[[[[1.0, 0.0]]]]), one_cascade(middle=[[[[1.0, 1.0]]]]))
    assert value.item() == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-12)


def test_at_paper_numpy_oracle():
    def attention(x):
        return unit_rows((x**2).mean(axis=1).reshape(x.shape[0], -1))

    expected = ((attention(STUDENT) - attention(TEACHER)) ** 2).mean()
    value = build_kd_loss("at", n_cascades=1)(one_cascade(middle=STUDENT), one_cascade(middle=TEACHER))
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_at_paper_pools_a_larger_non_square_student_map_to_the_teacher_size():
    student = np.arange(1.0, 1 + 2 * 3 * 4 * 6).reshape(2, 3, 4, 6) % 7
    teacher = TEACHER[:, :, :, :1].repeat(3, axis=3)  # (2, 2, 2, 3)
    energy = (student**2).mean(axis=1)  # (2, 4, 6) -> 2×2 block means -> (2, 2, 3)
    pooled = energy.reshape(2, 2, 2, 3, 2).mean(axis=(2, 4))
    expected = ((unit_rows(pooled.reshape(2, -1)) - unit_rows((teacher**2).mean(axis=1).reshape(2, -1))) ** 2).mean()
    value = build_kd_loss("at", n_cascades=1)(one_cascade(middle=student), one_cascade(middle=teacher))
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_at_authors_closed_form():
    # Σ_c x² over the batch: student [1, 0] -> [1, 0]; teacher [1, 1] -> [1/√2, 1/√2]; mean |diff| = 1/2.
    loss = build_kd_loss("at", mode="authors", n_cascades=1)
    value = loss(one_cascade(middle=[[[[1.0]]], [[[0.0]]]]), one_cascade(middle=[[[[1.0]]], [[[1.0]]]]))
    assert value.item() == pytest.approx(0.5, rel=1e-12)


def test_at_authors_numpy_oracle_normalises_along_the_batch():
    def attention(x):
        energy = (x**2).sum(axis=1)
        return energy / np.linalg.norm(energy, axis=0, keepdims=True)

    expected = np.abs(attention(STUDENT) - attention(TEACHER)).mean()
    value = build_kd_loss("at", mode="authors", n_cascades=1)(one_cascade(middle=STUDENT), one_cascade(middle=TEACHER))
    assert value.item() == pytest.approx(expected, rel=1e-12)


# --- FitNets ----------------------------------------------------------------------------------------------------

def test_fitnets_paper_regressor_then_mean_squared_error():
    loss = build_kd_loss("fitnets", n_cascades=1, channels=(2, 3)).double()
    weight = np.array([[1.0, -1.0], [0.5, 0.25], [-2.0, 0.0]])
    bias = np.array([0.1, -0.2, 3.0])
    conv = loss.regressors["0"][0]
    with torch.no_grad():
        conv.weight.copy_(t64(weight).view(3, 2, 1, 1))
        conv.bias.copy_(t64(bias))
    teacher = np.arange(24.0).reshape(2, 3, 2, 2) / 10
    guided = np.maximum(np.einsum("ts,bshw->bthw", weight, STUDENT) + bias[None, :, None, None], 0.0)
    expected = ((guided - teacher) ** 2).mean()
    value = loss(one_cascade(middle=STUDENT), one_cascade(middle=teacher))
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_fitnets_paper_is_zero_for_identical_features_and_an_identity_regressor():
    loss = build_kd_loss("fitnets", n_cascades=1, channels=(2, 2)).double()
    conv = loss.regressors["0"][0]
    with torch.no_grad():
        conv.weight.copy_(torch.eye(2, dtype=torch.float64).view(2, 2, 1, 1))
        conv.bias.zero_()
    assert loss(one_cascade(middle=STUDENT), one_cascade(middle=STUDENT)).item() == 0.0


def test_fitnets_authors_uses_the_middle_cascade_block_output_only():
    student_blocks = [np.full((2, 1, 2, 2), 9.0) for _ in range(5)]
    teacher_blocks = [np.full((2, 1, 2, 2), -3.0) for _ in range(5)]
    student_blocks[2] = STUDENT[:, :1]
    teacher_blocks[2] = TEACHER[:, 1:]

    def attention(x):
        energy = x[:, 0] ** 2
        return energy / np.linalg.norm(energy, axis=0, keepdims=True)

    expected = np.abs(attention(student_blocks[2]) - attention(teacher_blocks[2])).mean()
    loss = build_kd_loss("fitnets", mode="authors")
    assert loss.cascades == (2,)
    assert not list(loss.parameters())  # no regressor in the authors' variant
    value = loss([CascadeFeatures(block_output=t64(b)) for b in student_blocks],
                 [CascadeFeatures(block_output=t64(b)) for b in teacher_blocks])
    assert value.item() == pytest.approx(expected, rel=1e-12)


# --- SP ---------------------------------------------------------------------------------------------------------

def test_sp_closed_form():
    # G_s = I; G_t = all ones, rows normalised to 1/√2; ‖G_s − G_t‖² / B² = (4 − 2√2) / 4.
    value = build_kd_loss("sp", n_cascades=1)(one_cascade(middle=[[[[1.0, 0.0]]], [[[0.0, 1.0]]]]),
                                              one_cascade(middle=[[[[1.0, 0.0]]], [[[1.0, 0.0]]]]))
    assert value.item() == pytest.approx((4 - 2 * math.sqrt(2)) / 4, rel=1e-12)


def sp_oracle(student: np.ndarray, teacher: np.ndarray) -> float:
    def similarity(x):
        flat = x.reshape(x.shape[0], -1)
        return unit_rows(flat @ flat.T)

    return float(((similarity(student) - similarity(teacher)) ** 2).sum() / student.shape[0] ** 2)


def test_sp_paper_numpy_oracle_with_different_channel_counts():
    teacher = np.arange(1.0, 25.0).reshape(2, 3, 2, 2) ** 0.5
    value = build_kd_loss("sp", n_cascades=1)(one_cascade(middle=STUDENT), one_cascade(middle=teacher))
    assert value.item() == pytest.approx(sp_oracle(STUDENT, teacher), rel=1e-12)


def test_sp_authors_block_outputs_of_all_cascades_but_the_last():
    student = [STUDENT[:, :1] + k for k in range(3)]
    teacher = [TEACHER[:, 1:] * (k + 1) for k in range(3)]
    teacher[2] = -teacher[2]  # the last cascade is ignored
    loss = build_kd_loss("sp", mode="authors", n_cascades=3)
    assert loss.cascades == (0, 1)
    value = loss([CascadeFeatures(block_output=t64(b)) for b in student],
                 [CascadeFeatures(block_output=t64(b)) for b in teacher])
    assert value.item() == pytest.approx((sp_oracle(student[0], teacher[0]) + sp_oracle(student[1], teacher[1])) / 2,
                                         rel=1e-12)


# --- FSP --------------------------------------------------------------------------------------------------------

def fsp_oracle(first: np.ndarray, last: np.ndarray) -> np.ndarray:
    b, c1, h, w = first.shape
    return np.stack([first[i].reshape(c1, h * w) @ last[i].reshape(last.shape[1], h * w).T / (h * w)
                     for i in range(b)])


def test_fsp_matrix_closed_form():
    # one sample, one channel each, 1×2 maps: G = (1·3 + 2·4) / 2 = 5.5; teacher G = 0 -> loss 5.5².
    value = build_kd_loss("fsp", n_cascades=1, channels=(1, 1))(
        one_cascade(first=[[[[1.0, 2.0]]]], last=[[[[3.0, 4.0]]]]),
        one_cascade(first=[[[[0.0, 0.0]]]], last=[[[[3.0, 4.0]]]]))
    assert value.item() == pytest.approx(5.5**2, rel=1e-12)


def test_fsp_paper_numpy_oracle():
    student_last, teacher_last = STUDENT[:, ::-1] * 2, TEACHER + 1
    expected = ((fsp_oracle(STUDENT, student_last) - fsp_oracle(TEACHER, teacher_last)) ** 2).mean()
    value = build_kd_loss("fsp", n_cascades=1, channels=(2, 2))(one_cascade(first=STUDENT, last=student_last),
                                                                 one_cascade(first=TEACHER, last=teacher_last))
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_fsp_authors_pairs_consecutive_squared_block_outputs():
    blocks_s = [STUDENT[:, :1] - k for k in range(4)]
    blocks_t = [TEACHER[:, 1:] + k for k in range(4)]
    loss = build_kd_loss("fsp", mode="authors", n_cascades=4)
    assert loss.cascades == (0, 1, 2)

    def gram(a, b):
        return (a[:, 0] ** 2 * b[:, 0] ** 2).mean(axis=(1, 2))

    expected = np.mean([((gram(blocks_s[k], blocks_s[k + 1]) - gram(blocks_t[k], blocks_t[k + 1])) ** 2).mean()
                        for k in range(2)])
    value = loss([CascadeFeatures(block_output=t64(b)) for b in blocks_s],
                 [CascadeFeatures(block_output=t64(b)) for b in blocks_t])
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_fsp_rejects_unequal_channels_and_a_single_authors_cascade():
    with pytest.raises(InputError, match="channels"):
        build_kd_loss("fsp", channels=(16, 32))
    with pytest.raises(InputError, match="at least 2"):
        build_kd_loss("fsp", mode="authors", n_cascades=2)


# --- CC ---------------------------------------------------------------------------------------------------------

def test_cc_paper_closed_form():
    # Pooled unit embeddings: student e1 ⟂ e2 (inner products I), teacher e1 = e2 (all ones).
    # ψ(1) − ψ(0) = e^{−2γ}(2γ + (2γ)²/2) on the two off-diagonal entries; loss = 2 (ψ(1) − ψ(0))² / B².
    gamma = 0.4
    gap = math.exp(-2 * gamma) * (2 * gamma + (2 * gamma) ** 2 / 2)
    student = [[[[3.0]], [[0.0]]], [[[0.0]], [[2.0]]]]
    teacher = [[[[1.0]], [[0.0]]], [[[5.0]], [[0.0]]]]
    value = build_kd_loss("cc", n_cascades=1)(one_cascade(middle=student), one_cascade(middle=teacher))
    assert value.item() == pytest.approx(2 * gap**2 / 4, rel=1e-12)


def test_cc_paper_numpy_oracle_for_another_kernel_order():
    gamma, order = 0.7, 3

    def psi(x):
        e = unit_rows(x.mean(axis=(2, 3)))
        inner = e @ e.T
        return math.exp(-2 * gamma) * sum((2 * gamma) ** p / math.factorial(p) * inner**p for p in range(order + 1))

    expected = ((psi(STUDENT) - psi(TEACHER)) ** 2).sum() / 4
    loss = build_kd_loss("cc", n_cascades=1, gamma=gamma, order=order)
    assert loss(one_cascade(middle=STUDENT), one_cascade(middle=TEACHER)).item() == pytest.approx(expected, rel=1e-12)


def test_cc_authors_consecutive_batch_products():
    # δ = |s − t| for B = 3 one-pixel images: [1, 2, 4] -> (1·2 + 2·4) / 2 = 5.
    student = np.array([1.0, 5.0, 0.0]).reshape(3, 1, 1, 1)
    teacher = np.array([0.0, 3.0, 4.0]).reshape(3, 1, 1, 1)
    loss = build_kd_loss("cc", mode="authors", n_cascades=1)
    assert loss(one_cascade(block_output=student), one_cascade(block_output=teacher)).item() == 5.0


def test_cc_authors_numpy_oracle_sums_over_channels_and_rejects_a_batch_of_one():
    student, teacher = STUDENT, TEACHER
    delta = np.abs(student - teacher)
    expected = (delta[:-1] * delta[1:]).sum(axis=1).mean()
    loss = build_kd_loss("cc", mode="authors", n_cascades=1)
    assert loss(one_cascade(block_output=student), one_cascade(block_output=teacher)).item() == pytest.approx(
        expected, rel=1e-12)
    with pytest.raises(InputError, match="batch"):
        loss(one_cascade(block_output=student[:1]), one_cascade(block_output=teacher[:1]))


# --- PKT --------------------------------------------------------------------------------------------------------

def test_pkt_closed_form():
    # Student samples orthogonal: rows of P_s = [2/3, 1/3]; teacher samples parallel: P_t = 1/2 everywhere.
    # mean_ij P_t log(P_t / P_s) = (log(3/4) + log(3/2)) / 4 = log(9/8) / 4.
    value = build_kd_loss("pkt", n_cascades=1)(one_cascade(middle=[[[[1.0, 0.0]]], [[[0.0, 1.0]]]]),
                                               one_cascade(middle=[[[[2.0, 0.0]]], [[[1.0, 0.0]]]]))
    assert value.item() == pytest.approx(math.log(9 / 8) / 4, rel=1e-6)


def test_pkt_numpy_oracle():
    def probabilities(x):
        unit = unit_rows(x.reshape(x.shape[0], -1))
        kernel = (unit @ unit.T + 1) / 2
        return kernel / kernel.sum(axis=1, keepdims=True)

    student = STUDENT - 2.0  # mixed signs, so cosines differ clearly
    p_s, p_t = probabilities(student), probabilities(TEACHER)
    expected = (p_t * np.log((p_t + 1e-7) / (p_s + 1e-7))).mean()
    value = build_kd_loss("pkt", n_cascades=1)(one_cascade(middle=student), one_cascade(middle=TEACHER))
    assert value.item() == pytest.approx(expected, rel=1e-12)


# --- NST --------------------------------------------------------------------------------------------------------

def test_nst_closed_form():
    # One channel each, orthogonal unit maps: k(t,t) = k(s,s) = 1, k(s,t) = 0 -> MMD² = 2.
    value = build_kd_loss("nst", n_cascades=1)(one_cascade(middle=[[[[3.0, 0.0]]]]),
                                               one_cascade(middle=[[[[0.0, 0.5]]]]))
    assert value.item() == pytest.approx(2.0, rel=1e-12)


def test_nst_numpy_oracle_with_different_channel_counts():
    teacher = np.arange(1.0, 25.0).reshape(2, 3, 2, 2) % 4 + 0.5

    def channels(x):
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        return flat / np.linalg.norm(flat, axis=2, keepdims=True)

    def mean_kernel(a, b):
        return np.mean([(a[i] @ b[i].T) ** 2 for i in range(a.shape[0])])

    s, t = channels(STUDENT), channels(teacher)
    expected = mean_kernel(t, t) + mean_kernel(s, s) - 2 * mean_kernel(s, t)
    value = build_kd_loss("nst", n_cascades=1)(one_cascade(middle=STUDENT), one_cascade(middle=teacher))
    assert value.item() == pytest.approx(expected, rel=1e-12)


# --- FT ---------------------------------------------------------------------------------------------------------

def make_pass_through(stack: nn.Sequential) -> None:
    """Set every 3×3 conv of a stack to copy input channel o to output channel o (centre tap 1, no bias)."""
    with torch.no_grad():
        for conv in stack:
            if isinstance(conv, nn.Conv2d):
                conv.weight.zero_()
                conv.bias.zero_()
                for o in range(min(conv.out_channels, conv.in_channels)):
                    conv.weight[o, o, 1, 1] = 1.0


def test_ft_factors_are_compared_as_unit_vectors_with_l1():
    # Pass-through translator and paraphraser encoder (rate 0.5 of 2 channels keeps channel 0; LeakyReLU is the
    # identity on the non-negative inputs): the factors are channel 0 of the features.
    loss = build_kd_loss("ft", n_cascades=1, channels=(2, 2)).double()
    make_pass_through(loss.translators["0"])
    make_pass_through(loss.paraphrasers["0"].encoder)
    s = unit_rows(STUDENT[:, :1].reshape(2, -1))
    t = unit_rows(TEACHER[:, :1].reshape(2, -1))
    value = loss(one_cascade(middle=STUDENT), one_cascade(middle=TEACHER))
    assert value.item() == pytest.approx(np.abs(s - t).mean(), rel=1e-12)


def test_ft_pretraining_reconstructs_teacher_features_and_trains_only_the_paraphraser():
    loss = build_kd_loss("ft", n_cascades=2, channels=(2, 2)).double()
    teacher = [CascadeFeatures(middle=t64(TEACHER)), CascadeFeatures(middle=t64(TEACHER + 1))]
    with torch.no_grad():
        expected = np.mean([((loss.paraphrasers[str(i)](f.middle) - f.middle) ** 2).mean().item()
                            for i, f in enumerate(teacher)])
    pretrain = loss.pretrain_loss(teacher)
    assert pretrain.item() == pytest.approx(expected, rel=1e-12)
    pretrain.backward()
    assert all(p.grad is not None for p in loss.pretrain_parameters())
    assert all(p.grad is None for p in loss.translators.parameters())
    paraphraser_ids = {id(p) for p in loss.paraphrasers.parameters()}
    assert {id(p) for p in loss.trainable_parameters()} == {id(p) for p in loss.translators.parameters()}
    assert paraphraser_ids == {id(p) for p in loss.pretrain_parameters()}


def test_phase_defaults():
    assert KD_LOSSES.get("ft").pretrain_epochs_default == 30
    assert KD_LOSSES.get("fsp").feature_only_epochs_default == 30
    others = [n for n in KD_LOSSES if n not in ("ft", "fsp")]
    assert all(KD_LOSSES.get(n).pretrain_epochs_default == 0 for n in others)
    with pytest.raises(TypeError, match="no pre-training"):
        build_kd_loss("at").pretrain_loss([])


# --- shared contract --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, mode", [("at", "paper"), ("at", "authors"), ("sp", "paper"), ("sp", "authors"),
                                        ("fsp", "paper"), ("nst", "paper"), ("pkt", "paper"), ("cc", "paper"),
                                        ("cc", "authors"), ("fitnets", "authors")])
def test_identical_student_and_teacher_features_give_zero(name, mode):
    rng = np.random.default_rng(3)
    features = [CascadeFeatures(first=t64(rng.random((3, 2, 4, 5))), middle=t64(rng.random((3, 2, 4, 5))),
                                last=t64(rng.random((3, 2, 4, 5))), block_output=t64(rng.normal(size=(3, 1, 4, 5))))
                for _ in range(5)]
    loss = build_kd_loss(name, mode=mode, channels=(2, 2))
    assert loss(features, features).item() == pytest.approx(0.0, abs=1e-12)


def random_features(channels: int, seed: int, requires_grad: bool) -> list[CascadeFeatures]:
    generator = torch.Generator().manual_seed(seed)

    def tensor(*shape):
        return torch.rand(*shape, generator=generator, dtype=torch.float64).requires_grad_(requires_grad)

    return [CascadeFeatures(first=tensor(3, channels, 6, 7), middle=tensor(3, channels, 6, 7),
                            last=tensor(3, channels, 6, 7), block_output=tensor(3, 1, 4, 5),
                            output=tensor(3, 1, 4, 5)) for _ in range(5)]


@pytest.mark.parametrize("name, mode", ALL_MODES)
def test_gradient_reaches_the_student_and_never_the_teacher(name, mode):
    loss = build_kd_loss(name, mode=mode, channels=(4, 4)).double()
    student = random_features(4, seed=1, requires_grad=True)
    teacher = random_features(4, seed=2, requires_grad=True)
    loss(student, teacher).backward()
    taps = loss.required_taps()
    student_grads = [getattr(student[i], tap).grad for i in loss.cascades for tap in taps]
    assert all(g is not None and g.abs().sum() > 0 for g in student_grads)
    assert all(getattr(f, tap).grad is None for f in teacher for tap in ("first", "middle", "last", "block_output"))
    assert all(p.grad is not None for p in loss.trainable_parameters())
    assert all(p.grad is None for p in loss.pretrain_parameters())


def test_explicit_cascades_restrict_the_loss():
    loss = build_kd_loss("at", cascades=[1, 3], channels=(4, 4))
    student, teacher = random_features(4, 1, False), random_features(4, 2, False)
    before = loss(student, teacher).item()
    student[0] = student[2] = student[4] = CascadeFeatures(middle=torch.zeros(3, 4, 6, 7, dtype=torch.float64))
    assert loss(student, teacher).item() == before
    alone = [build_kd_loss("at", cascades=[i], channels=(4, 4))(student, teacher).item() for i in (1, 3)]
    assert before == pytest.approx(sum(alone) / 2, rel=1e-12)


@pytest.mark.parametrize("name, expected", [("at", (0, 1, 2, 3, 4)), ("fitnets", (2,)), ("sp", (0, 1, 2, 3)),
                                            ("fsp", (0, 1, 2, 3)), ("cc", (0, 1, 2, 3, 4))])
def test_authors_default_cascades_follow_their_scripts(name, expected):
    assert build_kd_loss(name, mode="authors").cascades == expected
    assert build_kd_loss(name).cascades == (0, 1, 2, 3, 4)


def test_feature_records_are_checked():
    loss = build_kd_loss("sp", channels=(4, 4))
    with pytest.raises(ValueError, match="5 cascades"):
        loss(random_features(4, 1, False)[:4], random_features(4, 2, False)[:4])
    student = random_features(4, 1, False)
    student[3] = CascadeFeatures(block_output=student[3].block_output)
    with pytest.raises(ValueError, match="middle"):
        loss(student, random_features(4, 2, False))


# --- registry, modes, options -----------------------------------------------------------------------------------

def test_registry_holds_the_eight_methods_and_rejects_unknown_names_listing_them():
    assert KD_LOSSES.names() == ["at", "cc", "fitnets", "fsp", "ft", "nst", "pkt", "sp"]
    with pytest.raises(InputError) as error:
        build_kd_loss("hinton")
    assert all(name in str(error.value) for name in KD_LOSSES.names())
    assert build_kd_loss("AT").name == "at"


@pytest.mark.parametrize("name", ["pkt", "ft", "nst"])
def test_methods_without_an_authors_variant_say_so(name):
    with pytest.raises(InputError, match="no 'authors' variant"):
        build_kd_loss(name, mode="authors")


def test_invalid_mode_cascades_and_options_are_input_errors():
    with pytest.raises(InputError, match="paper, authors"):
        build_kd_loss("at", mode="code")
    with pytest.raises(InputError, match=r"outside 0\.\.4"):
        build_kd_loss("at", cascades=[5])
    with pytest.raises(InputError, match="no cascade"):
        build_kd_loss("at", cascades=[])
    with pytest.raises(InputError, match=r"has no option 'gama'.*gamma"):
        build_kd_loss("cc", gama=0.4)
    assert isinstance(InputError("x"), ValueError)


@pytest.mark.parametrize("name", list(KD_LOSSES))
def test_each_loss_documents_its_paper_formula_reduction_and_weights(name):
    cls = KD_LOSSES.get(name)
    assert issubclass(cls, DistillationLoss)
    assert cls.paper and cls.weight_source and cls.__doc__
    assert "Reduction" in cls.__doc__ and "Default weight" in cls.__doc__
    assert cls.published_weight == REPDISTILLER_WEIGHTS[name]
    for mode in cls.modes:  # each default is the published weight rescaled by a power of ten
        exponent = math.log10(cls.default_weight_for(mode) / cls.published_weight)
        assert exponent == pytest.approx(round(exponent), abs=1e-9)


def test_default_weights_per_mode():
    assert KD_LOSSES.get("at").default_weight_for("paper") == 1000
    assert KD_LOSSES.get("at").default_weight_for("authors") == 1.0
    assert KD_LOSSES.get("pkt").default_weight_for("paper") == 30000
    assert build_kd_loss("sp", mode="authors").default_weight == 30.0  # an instance reports its mode's weight
    assert build_kd_loss("sp").default_weight == 300.0
    with pytest.raises(InputError, match="no 'authors' variant"):
        KD_LOSSES.get("pkt").default_weight_for("authors")


def test_an_authors_mode_needs_an_authors_weight():
    with pytest.raises(TypeError, match="authors_default_weight"):
        type("Incomplete", (DistillationLoss,), {"name": "x", "modes": ("paper", "authors")})


@pytest.mark.parametrize("ratio, verdict", [(0.01, "negligible"), (0.1, "balanced"), (3.0, "balanced"),
                                            (10.0, "balanced"), (11.0, "dominant")])
def test_weight_balance_classifies_the_first_epoch_ratio(ratio, verdict):
    assert weight_balance(ratio) == verdict


# --- real models: any dNcM --------------------------------------------------------------------------------------

def model_features(model, taps, zero_filled, kspace, mask, grad: bool) -> list[CascadeFeatures]:
    from compressor.models import FeatureRecorder

    with torch.set_grad_enabled(grad), FeatureRecorder(model, tap_module_paths(model, taps)) as recorder:
        recon = model.run_cascades(zero_filled, kspace, mask)
    return cascade_features(model, recorder.features, recon, taps)


@pytest.fixture(scope="module")
def tiny_batch():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(2, 1, 8, 10, generator=generator)
    mask = torch.zeros(1, 1, 8, 10)
    mask[..., ::2] = 1.0
    kspace = torch.fft.fft2(image, norm="ortho")
    kspace = torch.stack([kspace.real, kspace.imag], dim=-1) * mask.unsqueeze(-1)
    return image, kspace, mask


@pytest.mark.parametrize("student_arch", ["d2c5", "d3c5", "d5c5"])
def test_every_loss_runs_on_dccnn_features_and_returns_a_finite_scalar(student_arch, tiny_batch):
    torch.manual_seed(0)
    teacher, student = build_model("d5c5"), build_model(student_arch)
    everything = {"first", "middle", "last", "block_output", "output"}
    teacher_features = model_features(teacher, everything, *tiny_batch, grad=False)
    student_features = model_features(student, everything, *tiny_batch, grad=True)
    for name, mode in ALL_MODES:
        loss = build_kd_loss(name, mode=mode, channels=(32, 32), n_cascades=5)
        value = loss(student_features, teacher_features)
        assert value.dim() == 0 and torch.isfinite(value), (student_arch, name, mode)


def test_d2_blocks_pair_first_middle_and_last_to_their_single_hidden_layer(tiny_batch):
    model = build_model("d2c5")
    assert tap_module_paths(model, {"first", "middle", "last"}) == [f"cascades.{i}.block.relu1" for i in range(5)]
    features = model_features(model, {"first", "last"}, *tiny_batch, grad=False)
    assert features[0].first is features[0].last and features[0].middle is None
    assert features[0].first.shape == (2, 32, 18, 20)  # padded by 5 on each side


def test_loss_modules_do_not_change_model_parameter_counts():
    assert count_parameters("d3c5") == 49285 and count_parameters("d5c5") == 141765
    assert sum(p.numel() for p in build_kd_loss("fitnets").parameters()) == 5 * (32 * 32 + 32)


# --- composite --------------------------------------------------------------------------------------------------

def test_composite_loss_sums_weighted_terms_and_reports_each():
    l1, at = nn.L1Loss(), build_kd_loss("at", n_cascades=1)
    composite = CompositeLoss({"l1": (1.0, l1), "at": (1000, at)})
    assert str(composite) == "1*l1 + 1000*at"
    output, target = t64([[1.0, 2.0]]), t64([[0.0, 4.0]])
    student, teacher = one_cascade(middle=[[[[1.0, 0.0]]]]), one_cascade(middle=[[[[1.0, 1.0]]]])
    result = composite(l1=(output, target), at=(student, teacher))
    at_value = 1 - 1 / math.sqrt(2)
    assert result.terms["l1"].item() == 1.5 and result.terms["at"].item() == pytest.approx(at_value)
    assert result.total.item() == pytest.approx(1.5 + 1000 * at_value)
    assert result.ratio("at", "l1") == pytest.approx(1000 * at_value / 1.5)
    with pytest.raises(ValueError, match="exactly"):
        composite(l1=(output, target))


def test_composite_exposes_kd_parameters_to_the_optimiser():
    fitnets = build_kd_loss("fitnets", n_cascades=2)
    composite = CompositeLoss({"l1": (1.0, nn.L1Loss()), "fitnets": (100.0, fitnets)})
    assert {id(p) for p in composite.parameters()} == {id(p) for p in fitnets.parameters()}
