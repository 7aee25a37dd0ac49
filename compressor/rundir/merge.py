"""Several invocations in one run directory: :func:`merge_results` keeps the earlier ``results.json`` records a run did
not produce when their config differs only in what ran (:data:`SELECTION_FIELDS`); otherwise ``results.json`` is
replaced and the caller logs the note it returns."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from compressor.rundir.results import RunRecord

SELECTION_FIELDS = frozenset({"kd.method", "model.student", "sft.feature_ablation", "kd.random_init",
                              "data.acceleration", "train.device", "train.num_workers", "train.threads",
                              "train.teacher_cache_mib", "train.tensorboard", "data.cache_dir", "preset"})
"""Config fields that choose what runs (or where, or what it logs), not what a model computes: earlier records of a
directory are kept when the earlier config differs from the new one only in these."""


def config_differences(earlier: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The ``section.key`` fields (or top-level keys) whose values differ."""
    out = []
    for name in sorted(set(earlier) | set(new)):
        a, b = earlier.get(name), new.get(name)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{name}.{key}" for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
        elif a != b:
            out.append(name)
    return out


def _world_size(record: RunRecord) -> int:
    return record.distributed.world_size if record.distributed is not None else 1


def merge_results(earlier: RunRecord | None, earlier_config: dict[str, Any] | None, new: RunRecord,
                  new_config: dict[str, Any]) -> tuple[RunRecord, str | None]:
    """``new`` with the earlier records it did not produce, when merging is honest; and a note when it is not.

    Honest: the earlier config (``results.json``'s own ``config``; for format 1 the ``config.json`` beside it)
    differs from the new config only in :data:`SELECTION_FIELDS` and names the same teacher and task. Earlier
    records whose ``(name, split, stage_dir)`` the new run also produced are replaced in place by the new ones;
    the others keep their place, and records only the new run has follow. Otherwise the earlier records are
    dropped (their stage folders stay cached) and the note (one line) says why.
    """
    if earlier is None or not earlier.models:
        return new, None
    differences = config_differences(earlier_config or {}, new_config)
    blocking = [name for name in differences if name not in SELECTION_FIELDS]
    if _world_size(earlier) != _world_size(new):
        blocking.append("the number of training processes")
    if earlier_config is None or blocking or (earlier.teacher, earlier.task) != (new.teacher, new.task):
        reason = f"its config differs in {', '.join(blocking[:3])}" if blocking else "it has no comparable config"
        return new, (f"results.json: the earlier run's records were replaced, not merged ({reason}); their stage "
                     "folders are still cached")
    produced = {model.merge_key: model for model in new.models}
    # Earlier order first, each record replaced in place by its new version, then what only the new run has: a
    # second method run into the directory reads as if both had been asked for at once (``--method at,fitnets``).
    merged = [produced.get(model.merge_key, model) for model in earlier.models]
    known = {model.merge_key for model in earlier.models}
    merged += [model for model in new.models if model.merge_key not in known]
    return replace(new, models=tuple(merged), masks={**earlier.masks, **new.masks}), None
