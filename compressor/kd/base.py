"""What every knowledge-distillation (KD) loss shares: the feature taps, the base class, the registry, the composite.

A KD loss compares, cascade by cascade, features recorded from the student and from the (frozen) teacher. The
trainer records, for each cascade of each network, the taps a loss asks for (:meth:`DistillationLoss.required_taps`)
into a :class:`CascadeFeatures` and calls ``loss(student_features, teacher_features)``, one entry per cascade.

Pairing rule (any ``dNcM``, hence any depth, d2 included): cascade ``i`` of the student is paired with cascade ``i``
of the teacher; inside a cascade the taps are named by role, not by layer index:

* ``first``: the first hidden activation (``relu1``);
* ``middle``: :meth:`compressor.models.base.CascadeModel.distillation_layer` (``relu⌈N/2⌉``: d5 → relu3,
  d3 → relu2, d2 → relu1);
* ``last``: the last hidden activation (``relu(N-1)``; for d2 it is ``relu1`` again);
* ``block_output``: the CNN block's 1-channel output before DF;
* ``output``: the cascade's output after DF.

Hidden taps are ``(B, C, H + 2p, W + 2p)`` (``p`` = the block's padding); the two image taps are ``(B, 1, H, W)``.

:func:`tap_module_paths` and :func:`cascade_features` turn a model's forward pass into these records:

>>> taps = loss.required_taps()
>>> with FeatureRecorder(model, tap_module_paths(model, taps)) as recorder:
...     recon = model.run_cascades(zero_filled, kspace, mask)
>>> features = cascade_features(model, recorder.features, recon, taps)

Registering a new loss is one class and one line: subclass :class:`DistillationLoss`, fill its class attributes,
implement :meth:`DistillationLoss.cascade_loss`, and decorate it with :func:`register_kd_loss`.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from compressor.errors import InputError
from compressor.models.base import CascadeModel, ReconOutput
from compressor.models.features import FeatureRecorder
from compressor.registry import Registry
from compressor.vocabulary import KDMode, values

TAPS = ("first", "middle", "last", "block_output", "output")
HIDDEN_TAPS = ("first", "middle", "last")
MODES = values(KDMode)

BALANCED_RATIO = (0.1, 10.0)
"""Weighted KD term / L1 term at the first epoch: below the lower bound KD is negligible, above the upper dominant."""

CALIBRATION = ("embedded MNI T1 slices, 240 × 240, 4× random Cartesian mask; d5c5 teacher after 400 Adam steps "
               "(lr 1e-3, batch 4) on L1; d3c5 student at initialisation; mean ratio over 6 batches of 4 slices, "
               "each with a differently seeded student")
"""The setting in which the default weights were checked against :data:`BALANCED_RATIO`."""


@dataclass(kw_only=True)
class CascadeFeatures:
    """The taps of one cascade of one network. Taps a loss did not request may be ``None``.

    Attributes:
        first: first hidden activation (ReLU after conv1), ``(B, C, H', W')``.
        middle: the paired hidden activation (``model.distillation_layer(i)``), ``(B, C, H', W')``.
        last: last hidden activation (ReLU after conv N-1), ``(B, C, H', W')``.
        block_output: the CNN block's output before DF, ``(B, 1, H, W)``.
        output: the cascade's output after DF, ``(B, 1, H, W)``.
    """

    first: torch.Tensor | None = None
    middle: torch.Tensor | None = None
    last: torch.Tensor | None = None
    block_output: torch.Tensor | None = None
    output: torch.Tensor | None = None

    def taps(self) -> dict[str, torch.Tensor]:
        """The taps present, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def detached(self) -> CascadeFeatures:
        """A copy whose tensors are cut from the autograd graph (teacher features never receive gradients)."""
        return replace(self, **{name: tap.detach() for name, tap in self.taps().items()})

    @classmethod
    def concatenated(cls, parts: list[CascadeFeatures]) -> CascadeFeatures:
        """The taps of ``parts`` (one cascade of several batches, the same taps present) joined along the batch."""
        return cls(**{name: torch.cat([part.taps()[name] for part in parts]) for name in parts[0].taps()})


def hidden_tap_paths(model: CascadeModel, cascade: int) -> dict[str, str]:
    """Module paths of cascade ``cascade``'s hidden taps: ``first``, ``middle`` and ``last`` hidden activations."""
    layers = model.hidden_layers(cascade)
    return {"first": layers[0], "middle": model.distillation_layer(cascade), "last": layers[-1]}


def tap_module_paths(model: CascadeModel, taps: Iterable[str]) -> list[str]:
    """The module paths a :class:`~compressor.models.features.FeatureRecorder` must record for ``taps``."""
    wanted = [tap for tap in HIDDEN_TAPS if tap in set(taps)]
    paths = [hidden_tap_paths(model, i)[tap] for i in range(model.n_cascades) for tap in wanted]
    return list(dict.fromkeys(paths))


def cascade_features(model: CascadeModel, recorded: Mapping[str, torch.Tensor], recon: ReconOutput,
                     taps: Iterable[str]) -> list[CascadeFeatures]:
    """Assemble one :class:`CascadeFeatures` per cascade from a recorder's features and the forward pass.

    ``recorded`` maps module paths to activations (``FeatureRecorder.features`` over :func:`tap_module_paths`);
    ``recon`` is the :class:`ReconOutput` of ``model.run_cascades`` over all cascades. Taps not in ``taps`` stay
    ``None``, except the two image taps, which cost nothing and are always filled.
    """
    wanted = set(taps)
    features = []
    for i in range(model.n_cascades):
        hidden = {tap: recorded[path] for tap, path in hidden_tap_paths(model, i).items() if tap in wanted}
        features.append(CascadeFeatures(**hidden, block_output=recon.block_outputs[i],
                                        output=recon.cascade_outputs[i]))
    return features


def record_cascade_features(model: CascadeModel, image: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor,
                            taps: Iterable[str]) -> list[CascadeFeatures]:
    """Run every cascade of ``model`` from ``image`` and return the requested taps per cascade.

    Records the hidden taps through forward hooks (:class:`~compressor.models.features.FeatureRecorder`) on the
    paths of :func:`tap_module_paths`. Shapes as in :meth:`CascadeModel.run_cascades`.
    """
    taps = set(taps)
    with FeatureRecorder(model, tap_module_paths(model, taps)) as recorder:
        run = model.run_cascades(image, kspace, mask)
    return cascade_features(model, recorder.features, run, taps)


class DistillationLoss(nn.Module, ABC):
    """Base class of the KD losses: validated ``mode``, cascade selection, teacher detaching, mean reduction.

    Class attributes (read by the trainer and the CLI):
        name: registry name.
        paper: citation of the method's paper.
        default_weight: the paper-mode weight of this term next to the L1 reconstruction loss (on an instance:
            the default weight of the instance's mode).
        authors_default_weight: the authors-mode weight (``None`` when there is no authors mode).
        published_weight: RepDistiller's published weight for the method (Tian et al. 2020, ``train_student.py``).
        weight_source: where the default weights come from. Each default is the published weight where that keeps
            the weighted KD term within :data:`BALANCED_RATIO` of the L1 term on the embedded data
            (:data:`CALIBRATION`), else the published weight times the power of ten that brings the ratio
            nearest 1.
        modes: ``("paper",)`` or ``("paper", "authors")``; ``authors`` = the SFT-KD-Recon code's variant.
        paper_taps: the :data:`TAPS` the loss reads in paper mode.
        authors_taps: the :data:`TAPS` it reads in authors mode (empty when it has none).
        pretrain_epochs_default: epochs of a pre-training phase of the loss's own modules on teacher features
            alone, before distillation (:meth:`pretrain_loss`, :meth:`pretrain_parameters`); 0 = none.
        feature_only_epochs_default: epochs of a phase that trains the student on this KD loss alone before the
            reconstruction phase (the method's own initialisation stage); 0 = none.

    Args:
        mode: ``"paper"`` (each method as its paper defines it) or ``"authors"``.
        cascades: 0-based cascade indices to distil; ``None`` = :meth:`default_cascades` for the mode.
        n_cascades: cascades of the student and of the teacher (they are paired one to one).
        student_channels: channels of the student's hidden activations.
        teacher_channels: channels of the teacher's hidden activations.

    Reduction: :meth:`forward` returns the mean over the selected cascades of :meth:`cascade_loss`.
    """

    name: ClassVar[str]
    paper: ClassVar[str]
    default_weight: float
    authors_default_weight: ClassVar[float | None] = None
    published_weight: ClassVar[float]
    weight_source: ClassVar[str]
    modes: ClassVar[tuple[str, ...]] = ("paper",)
    paper_taps: ClassVar[frozenset[str]]
    authors_taps: ClassVar[frozenset[str]] = frozenset()
    pretrain_epochs_default: ClassVar[int] = 0
    feature_only_epochs_default: ClassVar[int] = 0

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "authors" in cls.modes and cls.authors_default_weight is None:
            raise TypeError(f"{cls.__name__} has an authors mode but no authors_default_weight")

    def __init__(self, mode: str = "paper", cascades: Sequence[int] | None = None, *, n_cascades: int = 5,
                 student_channels: int = 32, teacher_channels: int = 32):
        super().__init__()
        self.mode = _check_mode(type(self), mode)
        # On an instance, ``default_weight`` is the default of its own mode.
        self.default_weight = type(self).default_weight_for(mode)
        if n_cascades < 1:
            raise InputError(f"KD method {self.name!r}: n_cascades must be >= 1, got {n_cascades}")
        self.n_cascades = n_cascades
        self.student_channels = student_channels
        self.teacher_channels = teacher_channels
        chosen = self.default_cascades(n_cascades) if cascades is None else tuple(cascades)
        self.cascades: tuple[int, ...] = _check_cascades(self.name, chosen, n_cascades)

    @classmethod
    def default_weight_for(cls, mode: str) -> float:
        """The default weight of ``mode`` (``default_weight`` or ``authors_default_weight``)."""
        if _check_mode(cls, mode) == "authors" and cls.authors_default_weight is not None:
            return cls.authors_default_weight
        return cls.default_weight

    def default_cascades(self, n_cascades: int) -> tuple[int, ...]:
        """The cascades distilled when none are given: all of them (subclasses narrow it in authors mode)."""
        return tuple(range(n_cascades))

    def required_taps(self) -> set[str]:
        """The :class:`CascadeFeatures` fields this loss reads, for the trainer to record."""
        return set(self.authors_taps if self.mode == "authors" else self.paper_taps)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters trained together with the student (e.g. a FitNets regressor): add them to its optimizer."""
        pretrained = {id(p) for p in self.pretrain_parameters()}
        return (p for p in self.parameters() if id(p) not in pretrained)

    def pretrain_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters trained in the pre-training phase and frozen afterwards (none unless overridden)."""
        return iter(())

    def pretrain_loss(self, teacher: Sequence[CascadeFeatures]) -> torch.Tensor:
        """Loss of the pre-training phase; only losses with ``pretrain_epochs_default > 0`` define one."""
        raise TypeError(f"KD method {self.name!r} has no pre-training phase")

    def forward(self, student: Sequence[CascadeFeatures], teacher: Sequence[CascadeFeatures]) -> torch.Tensor:
        """The scalar KD loss; teacher features are detached. One :class:`CascadeFeatures` per cascade."""
        self._check_features(student, "student")
        self._check_features(teacher, "teacher")
        chosen_student = [student[i] for i in self.cascades]
        chosen_teacher = [teacher[i].detached() for i in self.cascades]
        return self.selected_loss(chosen_student, chosen_teacher)

    def selected_loss(self, student: list[CascadeFeatures], teacher: list[CascadeFeatures]) -> torch.Tensor:
        """Reduce over the selected cascades (already picked, teacher detached): the mean of :meth:`cascade_loss`."""
        losses = [self.cascade_loss(i, s, t) for i, s, t in zip(self.cascades, student, teacher)]
        return torch.stack(losses).mean()

    @abstractmethod
    def cascade_loss(self, cascade: int, student: CascadeFeatures, teacher: CascadeFeatures) -> torch.Tensor:
        """The loss of one cascade pair (scalar); ``cascade`` indexes per-cascade modules."""

    def _check_features(self, features: Sequence[CascadeFeatures], who: str) -> None:
        if len(features) != self.n_cascades:
            raise ValueError(f"KD method {self.name!r} was built for {self.n_cascades} cascades, "
                             f"got {who} features of {len(features)}")
        for i in self.cascades:
            missing = [tap for tap in self.required_taps() if getattr(features[i], tap) is None]
            if missing:
                raise ValueError(f"KD method {self.name!r} ({self.mode}) needs the {who}'s taps {sorted(missing)} "
                                 f"of cascade {i}")

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, cascades={self.cascades}"


def _check_mode(cls: type[DistillationLoss], mode: str) -> str:
    if mode not in MODES:
        raise InputError(f"KD mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode not in cls.modes:
        raise InputError(f"KD method {cls.name!r} has no {mode!r} variant; its modes: {', '.join(cls.modes)}")
    return mode


def _check_cascades(name: str, cascades: tuple[int, ...], n_cascades: int) -> tuple[int, ...]:
    if not cascades:
        raise InputError(f"KD method {name!r}: no cascade selected (model has {n_cascades})")
    outside = [c for c in cascades if not 0 <= c < n_cascades]
    if outside:
        raise InputError(f"KD method {name!r}: cascades {outside} outside 0..{n_cascades - 1}")
    if len(set(cascades)) != len(cascades):
        raise InputError(f"KD method {name!r}: cascades {list(cascades)} repeat an index")
    return cascades


KD_LOSSES: Registry[type[DistillationLoss]] = Registry("KD method")


def register_kd_loss(cls: type[DistillationLoss]) -> type[DistillationLoss]:
    """Class decorator: add ``cls`` to :data:`KD_LOSSES` under ``cls.name``."""
    return KD_LOSSES.register(cls.name)(cls)


def build_kd_loss(name: str, mode: str = "paper", channels: tuple[int, int] = (32, 32), n_cascades: int = 5,
                  **options: object) -> DistillationLoss:
    """Build the KD loss registered as ``name``.

    Args:
        name: registered name (:data:`KD_LOSSES`); unknown → :class:`InputError` listing the valid names.
        mode: ``"paper"`` or ``"authors"``.
        channels: ``(student, teacher)`` channels of the hidden activations.
        n_cascades: cascades of student and teacher.
        options: method-specific keyword options (e.g. ``cascades``, AT's ``p``); an unknown one → InputError.
    """
    cls = KD_LOSSES.get(name)
    accepted = {p for p in inspect.signature(cls.__init__).parameters if p != "self"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        valid = sorted(accepted - {"mode", "n_cascades", "student_channels", "teacher_channels"})
        raise InputError(f"KD method {cls.name!r} has no option {unknown[0]!r}; valid options: {', '.join(valid)}")
    student_channels, teacher_channels = channels
    return cls(mode=mode, n_cascades=n_cascades, student_channels=student_channels,
               teacher_channels=teacher_channels, **options)


def resize_map_to(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """Adaptive-average-pool a ``(B, C, H_s, W_s)`` or ``(B, H_s, W_s)`` student map to the teacher's spatial size.

    Only needed when teacher and student spatial sizes differ (different block padding); height and width are
    handled separately, so non-square maps are fine.
    """
    size = teacher_map.shape[-2:]
    if student_map.shape[-2:] == size:
        return student_map
    if student_map.dim() == 3:
        return F.adaptive_avg_pool2d(student_map.unsqueeze(1), size).squeeze(1)
    return F.adaptive_avg_pool2d(student_map, size)


def weight_balance(ratio: float) -> str:
    """Where a weighted KD / L1 ratio falls in :data:`BALANCED_RATIO`: ``negligible``, ``balanced`` or ``dominant``."""
    low, high = BALANCED_RATIO
    if ratio < low:
        return "negligible"
    return "dominant" if ratio > high else "balanced"


class WeightedTerm(NamedTuple):
    """One term of a :class:`CompositeLoss`: ``weight * loss(*args)``."""

    weight: float
    loss: nn.Module


@dataclass
class LossTerms:
    """What a :class:`CompositeLoss` computed.

    Attributes:
        total: ``Σ weight · term``, the differentiable scalar to minimise.
        terms: each term's value before weighting, by name.
        weights: each term's weight, by name.
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    weights: dict[str, float]

    def weighted(self, name: str) -> torch.Tensor:
        """Term ``name`` as it enters the total (weight × value)."""
        return self.weights[name] * self.terms[name]

    def ratio(self, numerator: str, denominator: str) -> float:
        """``weighted(numerator) / weighted(denominator)`` as a float (``inf`` if the denominator is 0).

        The trainer logs ``ratio(kd_name, "l1")`` at the first epoch: a KD term that is negligible (≪ 1) or
        dominant (≫ 1) there means the weight does not suit the data.
        """
        bottom = float(self.weighted(denominator).detach())
        top = float(self.weighted(numerator).detach())
        return float("inf") if bottom == 0.0 else top / bottom


class CompositeLoss(nn.Module):
    """A weighted sum of named loss terms, ``L = Σ_k w_k · L_k``, e.g. ``1*l1 + 1000*at``.

    Each term receives its own arguments: ``composite(l1=(output, target), at=(student_feats, teacher_feats))``
    returns a :class:`LossTerms`. Every term must be given its arguments, and no others.
    The term modules are submodules, so a KD loss's trainable parts appear in ``composite.parameters()``.
    """

    def __init__(self, terms: Mapping[str, WeightedTerm | tuple[float, nn.Module]]):
        super().__init__()
        if not terms:
            raise ValueError("a composite loss needs at least one term")
        weighted = {name: WeightedTerm(*term) for name, term in terms.items()}
        self.weights = {name: float(term.weight) for name, term in weighted.items()}
        self.losses = nn.ModuleDict({name: term.loss for name, term in weighted.items()})

    def forward(self, **arguments: tuple) -> LossTerms:
        if set(arguments) != set(self.weights):
            raise ValueError(f"composite loss {self} needs arguments for exactly {sorted(self.weights)}, "
                             f"got {sorted(arguments)}")
        terms = {name: self.losses[name](*arguments[name]) for name in self.weights}
        total = torch.stack([self.weights[name] * value for name, value in terms.items()]).sum()
        return LossTerms(total=total, terms=terms, weights=dict(self.weights))

    def __str__(self) -> str:
        return " + ".join(f"{weight:g}*{name}" for name, weight in self.weights.items())
