r"""One streamed slice through an exported model: what the MRD server (:mod:`compressor.export.scanner.mrd_connection`)
and the MRD v2 filter (:mod:`compressor.export.scanner.mrd_stream`) share.

:class:`SliceReconstructor` holds one model and its training mask and does, for one slice, what ``compress
reconstruct --source ismrmrd`` does for a file (:func:`~compressor.export.scanner.raw_input.read_raw_input`):
:func:`~compressor.export.scanner.raw_input.prepare_slice` (grid, mask lines acquired, coils, partial readouts), then
for a 1-channel model the phase check of ``reconstruct``
(:func:`~compressor.export.scanner.scanner_input.check_phase`, on the slice alone: a stream has no "whole input"),
then the model (:func:`~compressor.export.scanner.reconstruct.reconstruct_slices`, batch 1).

The comparison image (:attr:`SliceResult.zero_filled`) is the zero-filled reconstruction of exactly what the model
was given: ``F^{-1}`` (orthonormal) of the prepared single-coil k-space, zero outside the mask, in the same units as
the network's image (the graph's output is its normalised image times its scale, in input units).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compressor.data.mrd_header import EncodingGeometry
from compressor.data.mrd_raw import AssembledSlice
from compressor.export.runtimes.session import ExportedModel
from compressor.export.scanner.raw_input import prepare_slice
from compressor.export.scanner.reconstruct import reconstruct_slices
from compressor.export.scanner.scanner_input import check_mask, check_phase


@dataclass(frozen=True)
class SliceResult:
    """One slice reconstructed.

    Attributes:
        reconstruction: ``(H, W)`` in the input's units: float32 (1-channel model) or complex64 (2-channel).
        zero_filled: ``(H, W)`` complex64 zero-filled image of the model's input, if asked for.
        lines_outside_mask: acquired lines the model's mask does not sample (set to zero before the model).
        queued: seconds spent waiting for a model run slot.
    """

    reconstruction: np.ndarray
    zero_filled: np.ndarray | None
    lines_outside_mask: int
    queued: float


class SliceReconstructor:
    """One exported model reconstructing streamed slices (module docstring). Thread-safe: it holds no per-scan state.

    Args:
        model: the opened model; its training mask is the mask (checked against the model once here).
        take_real_part: 1-channel models: reconstruct the real part of a complex-valued image instead of refusing it.
        runs: the semaphore bounding model runs at once across threads and models (the server's choice, see
            :mod:`compressor.export.scanner.mrd_server`; ``None``: one run at a time); the checks before a run are
            not limited.
    """

    def __init__(self, model: ExportedModel, take_real_part: bool = False,
                 runs: threading.Semaphore | None = None):
        self.model = model
        self.mask = model.metadata.mask
        self.take_real_part = take_real_part
        self._runs = runs if runs is not None else threading.BoundedSemaphore(1)
        check_mask(self.mask, model.metadata, model.path)

    def reconstruct(self, assembled: AssembledSlice, geometry: EncodingGeometry, source: str | Path,
                    zero_filled: bool = False) -> SliceResult:
        """Reconstruct one slice (module docstring); every problem is an
        :class:`~compressor.errors.InputError` naming ``source``."""
        prepared = prepare_slice(assembled, geometry, self.mask, self.model.metadata, source)
        kspace = prepared.kspace[None]
        if self.model.metadata.image_channels == 1:  # a 2-channel model takes any phase: no transform to spend
            check_phase(kspace, prepared.mask, 1, self.take_real_part, source)
        waiting = time.perf_counter()
        with self._runs:
            queued = time.perf_counter() - waiting
            reconstruction = reconstruct_slices(self.model, kspace, prepared.mask)[0]
        comparison = np.fft.ifft2(prepared.kspace, norm="ortho").astype(np.complex64) if zero_filled else None
        return SliceResult(reconstruction, comparison, prepared.lines_outside_mask, queued)
