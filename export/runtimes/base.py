"""What the tool asks of a runtime (:class:`Runtime`) and of an inference session (:class:`Session`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from compressor.export.exported_file import ExportMetadata


class Session(Protocol):
    """What the tool asks of an inference session: ONNX Runtime's ``InferenceSession.run``."""

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs ``output_names`` (``None``: all, in graph order) for the named inputs."""
        ...


class Runtime(ABC):
    """A way to run an exported file, registered in :data:`compressor.export.runtimes.registry.RUNTIMES`.

    Attributes (fields of each subclass):
        key: its ``--provider`` choice, e.g. ``"cpu"``, ``"openvino"``.
        preference: ``auto`` picks the usable runtime of highest preference.
        unusable: why it may not run here, for the error when it was asked for and cannot.
    """

    key: str
    preference: int
    unusable: str

    @property
    @abstractmethod
    def name(self) -> str:
        """Its name in results and logs, e.g. ``"CPUExecutionProvider"``, ``"OpenVINO-CPU"``."""

    @property
    @abstractmethod
    def label(self) -> str:
        """The runtime in words, as reports name it, e.g. ``"ONNX Runtime (CPUExecutionProvider)"``."""

    @property
    @abstractmethod
    def title(self) -> str:
        """Its name in a sentence, e.g. ``"the CUDA execution provider"``, ``"OpenVINO"``."""

    @property
    def is_onnxruntime(self) -> bool:
        """Whether it is an ONNX Runtime execution provider (its profiler, its graph optimiser)."""
        return False

    @property
    @abstractmethod
    def on_cpu(self) -> bool:
        """Whether it computes on the CPU (where fp16 runs through casts to fp32)."""

    @abstractmethod
    def usable(self) -> bool:
        """Whether it can run here (installed, and its device present)."""

    @abstractmethod
    def session(self, model: str | Path | bytes, threads: int | None = None, spinning: bool = False) -> Session:
        """A session on ``model`` (a file or serialised ONNX) that runs on exactly this runtime: ``threads`` per
        inference (``None``: the runtime's default, every core), thread spinning only when asked."""

    @abstractmethod
    def open(self, path: Path, threads: int | None) -> tuple[Session, ExportMetadata]:
        """A session on the exported file ``path`` and its metadata; an unloadable or foreign file raises
        :class:`~compressor.errors.InputError`."""

    @abstractmethod
    def node_providers(self, model: Path, feed: Mapping[str, np.ndarray]) -> dict[str, str]:
        """``{node name: the provider that ran it}`` for one run of ``model`` on ``feed``."""

    def stray_providers(self, node_providers: Mapping[str, str]) -> list[str]:
        """The providers other than this runtime among :meth:`node_providers`' (sorted; empty: none left it)."""
        return sorted({provider for provider in node_providers.values() if provider != self.name})
