"""Interleaved wall-clock timing of a few calls, for the benchmark and the INT8 speed check."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Timing:
    """Median and 90th percentile of a list of durations, in ms."""

    median: float
    p90: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Timing:
        ms = np.asarray(seconds) * 1e3
        return cls(float(np.median(ms)), float(np.percentile(ms, 90)))


def timed(call: Callable[[], Any]) -> float:
    """Wall seconds of one ``call()``."""
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def interleaved_timings(calls: Mapping[str, Callable[[], Any]], iterations: int, warmup: int) -> dict[str, Timing]:
    """Time the ``calls`` in turn, one call of each per iteration; the first ``warmup`` iterations are dropped."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for iteration in range(warmup + iterations):
        for name, call in calls.items():
            seconds = timed(call)
            if iteration >= warmup:
                samples[name].append(seconds)
    return {name: Timing.of(values) for name, values in samples.items()}
