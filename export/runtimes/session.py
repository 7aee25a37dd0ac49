"""An exported model opened for inference (:class:`ExportedModel`, :func:`open_exported`) and the feed its graph
takes (:func:`graph_feed`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compressor.errors import InputError
from compressor.export.exported_file import SCALE_OUTPUT, ExportMetadata
from compressor.export.runtimes.base import Runtime, Session
from compressor.export.runtimes.registry import AUTO, choose_runtime


def graph_feed(kspace: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's inputs for complex uncentred k-space ``(B, H, W)`` and a 0/1 mask ``(H, W)``."""
    return {
        "kspace_real": np.ascontiguousarray(kspace.real, dtype=np.float32),
        "kspace_imag": np.ascontiguousarray(kspace.imag, dtype=np.float32),
        "mask": np.ascontiguousarray(mask, dtype=np.float32),
    }


@dataclass
class ExportedModel:
    """An exported model opened for inference: its session, the :class:`Runtime` that runs it, its metadata and the
    inference threads asked for (``None``: the runtime's default, all cores)."""

    path: Path
    session: Session
    runtime: Runtime
    metadata: ExportMetadata
    threads: int | None = None

    def run_outputs(self, kspace: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the graph by name (:attr:`ExportMetadata.outputs`) for complex uncentred k-space
        ``(B, H, W)`` and ``mask`` ``(H, W)`` (not fed to a graph without a ``mask`` input: a Triton repository's
        model has its training mask folded in)."""
        names = list(self.metadata.outputs.names)
        feed = {name: value for name, value in graph_feed(kspace, mask).items() if name in self.metadata.inputs}
        return dict(zip(names, self.session.run(names, feed), strict=True))

    def run(self, kspace: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reconstruct complex uncentred k-space ``(B, H, W)`` with ``mask`` ``(H, W)``.

        Returns ``(image (B, H, W) normalised, scale (B,))``; the image is float32 for a 1-channel model, complex64
        for a 2-channel one; ``image * scale[:, None, None]`` is in input units.
        """
        outputs = self.run_outputs(kspace, mask)
        return self.metadata.outputs.image(outputs), outputs[SCALE_OUTPUT]


def open_exported(path: str | Path, runtime: str | Runtime = AUTO, threads: int | None = None) -> ExportedModel:
    """Open an exported model on ``runtime`` (a ``--provider`` choice, :func:`choose_runtime`, or a runtime); a
    missing, corrupt or foreign file raises :class:`InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError("model file not found", path)
    chosen = runtime if isinstance(runtime, Runtime) else choose_runtime(runtime)
    session, metadata = chosen.open(path, threads)
    return ExportedModel(path, session, chosen, metadata, threads)
