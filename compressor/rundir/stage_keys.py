"""The stage-key rule (:func:`stage_determinants`): which config fields enter a stage's cache key.

A field enters the key of a stage unless

1. it never determines a stage's result (:data:`NOT_DETERMINANTS`: the accelerations, the data cache, devices,
   which setups run, whether TensorBoard events are written, ...), or
2. it applies only to another task (:data:`ONLY_FOR_TASK`: ``sr_interpolation`` and the SR scale), or
3. it is not one of the format-1 key fields (:data:`KEY_FIELDS_V1`) and holds its declared default (the
   dataclass default of its config section or of ``ModelOptions``; :data:`STAGE_DEFAULTS` for the stage's own
   parts: ``loss`` ``l1``, ``init_teacher`` none, ``world_size`` 1, ``phase_formation`` 1).

So a field added later (image channels, precision, ...) leaves every committed key unchanged until a run sets it,
and ``TRAINING_CODE_VERSION`` (``compressor.training.stages``) stays the one way to retire keys on purpose.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any

NOT_DETERMINANTS: dict[str, frozenset[str]] = {
    "data": frozenset({"acceleration", "cache_dir"}),
    "train": frozenset({"epochs_teacher", "epochs_student", "epochs_kd", "epochs_sft", "device", "num_workers",
                        "threads", "teacher_cache_mib", "tensorboard"}),
    "sft": frozenset({"feature_ablation"}),  # which setups run, not what one SFT teacher computes
    "kd": frozenset({"random_init", "method_weights"}),  # which stages run; the resolved weight is in the key
    "model_options": frozenset(),
    "stage": frozenset(),
}
"""Fields that never enter a stage key, per section (``stage``: the stage's own parts)."""

KEY_FIELDS_V1: dict[str, frozenset[str]] = {
    "data": frozenset({"source", "train", "validation", "test", "image_size", "downsample", "mask_type", "mask_seed",
                       "center_fraction", "mask_file", "mask_centred", "max_train_slices", "max_eval_slices",
                       "fastmri_target_key", "sr_interpolation"}),
    "train": frozenset({"batch_size", "lr", "lr_step", "lr_gamma", "seed", "amp"}),
    "model_options": frozenset({"block_form", "block_padding", "dc_lambda", "dc_learnable", "channels"}),
    "sft": frozenset({"teacher_weight", "student_weight", "imitation_weight", "imitation_per_pixel"}),
    "kd": frozenset({"method", "weight", "schedule", "mode", "feature_epochs"}),
    "stage": frozenset({"data", "mask", "model_options", "epochs", "student_arch", "sft", "kd", "sr_scale"}),
}
"""The fields of the format-1 keys: they enter a key even at their default, so committed keys stay the same."""

ONLY_FOR_TASK = {"data.sr_interpolation": "sr", "stage.sr_scale": "sr"}
"""Fields that apply to one task only; other tasks' keys leave them out."""

STAGE_DEFAULTS = {"loss": "l1", "init_teacher": None, "world_size": 1, "phase_formation": 1}
"""Declared defaults of the stage's own key parts that are not config fields (``world_size``: the processes that
train it, ``torchrun``; ``train.batch_size`` is the per-rank batch, so the global batch is their product;
``phase_formation``: the data source's version of the 2-channel slices it forms, 1 for 1-channel runs)."""


def section_defaults(section: str) -> dict[str, Any]:
    """The declared defaults of a config section's fields (``{}`` for a name that is no section)."""
    from compressor.config import SECTION_TYPES  # the config imports the model and KD registries (torch): not here

    if section not in SECTION_TYPES:
        return {}
    out = {}
    for spec in fields(SECTION_TYPES[section]):
        if spec.default is not MISSING:
            out[spec.name] = spec.default
        elif spec.default_factory is not MISSING:
            out[spec.name] = spec.default_factory()
    return out


def key_fields(section: str, values: dict[str, Any], task: str, defaults: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """The part of ``values`` (one section) that enters a stage key, by the rule of the module docstring.

    ``defaults``: the declared defaults of the section's fields (default: the config section's dataclass).
    """
    defaults = section_defaults(section) if defaults is None else defaults
    kept = {}
    for name, value in values.items():
        where = f"{section}.{name}"
        if name in NOT_DETERMINANTS.get(section, ()):
            continue
        if where in ONLY_FOR_TASK and ONLY_FOR_TASK[where] != task:
            continue
        if name not in KEY_FIELDS_V1.get(section, ()) and name in defaults and value == defaults[name]:
            continue
        kept[name] = value
    return kept


def stage_determinants(config: dict[str, Any], model_options: dict[str, Any], model_option_defaults: dict[str, Any],
                       mask_digest: str, epochs: int, stage: dict[str, Any]) -> dict[str, Any]:
    """Everything a stage's key hashes besides role, arch, acceleration, method and parents.

    Args:
        config: the run's config as a dict (``RunConfig.to_dict()``).
        model_options: ``ModelOptions.to_dict()``; ``model_option_defaults`` the same of ``ModelOptions()``.
        mask_digest: the acceleration's mask digest.
        epochs: the stage's epochs.
        stage: the stage's own parts (``loss``, ``sr_scale``, ``init_teacher``, ``student_arch``, and the
            ``sft`` and ``kd`` determinants of SFT-teacher and KD stages, already passed through
            :func:`key_fields`).
    """
    task = config["data"]["task"]
    return key_fields("stage", {
        "data": key_fields("data", config["data"], task), "mask": mask_digest,
        "model_options": key_fields("model_options", model_options, task, model_option_defaults),
        "epochs": epochs, **key_fields("train", config["train"], task), **stage,
    }, task, STAGE_DEFAULTS)

