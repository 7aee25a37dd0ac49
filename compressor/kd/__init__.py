"""Knowledge-distillation losses, found by name in :data:`KD_LOSSES` and built by :func:`build_kd_loss`.

Each loss lives in its own module (``at``, ``fitnets``, ``sp``, ``fsp``, ``cc``, ``pkt``, ``ft``, ``nst``) and
registers itself on import; importing this package imports them all.
"""

from compressor.kd import at, cc, fitnets, fsp, ft, nst, pkt, sp  # noqa: F401  (each module registers its loss)
from compressor.kd.base import (
    BALANCED_RATIO,
    CALIBRATION,
    KD_LOSSES,
    MODES,
    TAPS,
    CascadeFeatures,
    CompositeLoss,
    DistillationLoss,
    LossTerms,
    WeightedTerm,
    build_kd_loss,
    cascade_features,
    hidden_tap_paths,
    record_cascade_features,
    register_kd_loss,
    tap_module_paths,
    weight_balance,
)

__all__ = [
    "BALANCED_RATIO",
    "CALIBRATION",
    "KD_LOSSES",
    "MODES",
    "TAPS",
    "CascadeFeatures",
    "CompositeLoss",
    "DistillationLoss",
    "LossTerms",
    "WeightedTerm",
    "build_kd_loss",
    "cascade_features",
    "hidden_tap_paths",
    "record_cascade_features",
    "register_kd_loss",
    "tap_module_paths",
    "weight_balance",
]
