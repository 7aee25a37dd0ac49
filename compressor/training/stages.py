"""Stage identity and caching.

A stage's directory is ``stages/<stage>-<arch>-<key>``; ``key`` hashes everything that determines its result
(architecture, model options, data, acceleration, mask digest, optimisation settings, per-stage epochs, loss
weights, KD method/mode/schedule, and the keys of the stages it starts from). Re-running with another method
or student reuses every stage already complete; changing an option retrains only the stages that depend on it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Bump when a code change alters what a stage computes, so old caches are not reused silently.
TRAINING_CODE_VERSION = 1

ROLES = ("teacher", "student", "std_kd", "sft_teacher", "sft_kd", "sft_kd_random")


def digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class StageSpec:
    """One node of the stage graph: what it trains and everything its result depends on."""

    role: str
    arch: str
    acceleration: float
    method: str | None = None
    determinants: dict[str, Any] = field(default_factory=dict)
    parents: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown stage role {self.role!r}")

    @property
    def key(self) -> str:
        return digest({"role": self.role, "arch": self.arch, "acceleration": self.acceleration,
                       "method": self.method, "determinants": self.determinants, "parents": self.parents,
                       "code_version": TRAINING_CODE_VERSION})

    @property
    def name(self) -> str:
        """Display name, the ``name`` field of results.json: ``role[/method]/arch@Rx``."""
        method = f"/{self.method}" if self.method else ""
        return f"{self.role}{method}/{self.arch}@{self.acceleration:g}x"

    def directory(self, run_dir: Path) -> Path:
        method = f"-{self.method}" if self.method else ""
        return run_dir / "stages" / f"{self.role}{method}-{self.arch}-{self.key}"
