r"""ISMRMRD (MRD) raw acquisitions assembled into one k-space per slice, the same way for files and for streams.

An MRD scan is an XML header (the encoding: matrix sizes, field of view, ``kspace_encoding_step_1`` limits,
trajectory) followed by acquisitions, one readout each: ``(coils, samples)`` complex samples of one phase-encode line,
with its indices (``kspace_encode_step_1``, ``average``, ``slice``, ``contrast``, ``phase``, ``repetition``, ``set``),
flags and geometry. This module turns them into :class:`AssembledSlice` records on the tool's image grid:

* **grid**: ``(H, W)`` = (readout after oversampling removal, phase-encode), ``H = reconSpace.matrixSize.x`` and
  ``W = encodedSpace.matrixSize.y``: the phase-encode axis is kept whole, as
  :class:`~compressor.data.fastmri.FastMRIReader` does
  (:attr:`~compressor.data.mrd_header.EncodingGeometry.image_shape`);
* **k-space convention**: the returned k-space is the tool's: **uncentred** (DC at index ``(0, 0)``), orthonormal,
  the ``fft2`` of the image as the scanner shows it (``fftshift(ifft2(ifftshift(centred k)))``, FOV centre at
  ``N // 2``), exactly as :class:`~compressor.data.readers.FastMRIReader` converts fastMRI's centred k-space
  (:func:`readout_spectrum` along the readout, :func:`phase_encode_spectrum` along the phase-encode axis: there
  that is ``ifftshift`` times a phase ramp, ``(-1)^k`` for even sizes, so it keeps line masks). Readouts are first
  placed on the scanner's *centred* grid (DC at ``N // 2``):
* **line placement**: a line goes to centred column ``kspace_encode_step_1 - center + W // 2`` (``center`` is the
  header's ``encodingLimits.kspace_encoding_step_1.center``); out of range is an :class:`InputError`;
* **sample placement**: readout sample ``s`` goes to centred row ``s - center_sample + Nx // 2`` of the encoded
  readout (``Nx = encodedSpace.matrixSize.x``, oversampling included), so an asymmetric echo (fewer samples, the
  echo off centre) lands where it belongs and its missing samples stay zero; samples in ``discard_pre`` /
  ``discard_post`` are dropped;
* **reversed readouts** (``ACQ_IS_REVERSE``, e.g. EPI's odd echoes) are flipped along the readout before placement.
  ``discard_pre`` / ``discard_post`` count samples in *acquisition* order (ISMRMRD: at the beginning / end of the
  acquisition), so on a reversed readout ``discard_pre`` samples go from the end of the flipped data and
  ``discard_post`` from its start. ``center_sample`` is taken as the centre's index in the *flipped* (k-ordered) data,
  i.e. it is kept as is: siemens_to_ismrmrd copies the Siemens header's k-space centre column and the samples
  unchanged, and Gadgetron's ReverseLineGadget flips the samples and leaves ``center_sample`` alone, so the data
  those produce and consume follow this convention (for a symmetric even readout the alternative,
  ``n - 1 - center_sample``, would move the line by one sample);
* **averages** of a line (``average`` index, NEX > 1, or any line measured again) are **averaged**: the mean of the
  measured k-space, as scanners combine NEX; one image per :class:`SliceKey` (slice, contrast, phase, repetition,
  set). A slice is complete at ``ACQ_LAST_IN_SLICE`` of average ``encodingLimits.average.maximum`` (0 when the header
  has no average limit); a readout of a slice that was already completed is an :class:`InputError` naming the slice
  and the header's limit (a header without the limit but NEX > 1 data, or repeated slice indices), never a second
  image of the same slice;
* **noise prewhitening**: noise readouts (``ACQ_IS_NOISE_MEASUREMENT``) accumulate the coil noise covariance
  ``Ψ = (1/M) Σ n n^H`` (zero-mean noise, ``M`` samples); at the first image readout the prewhitening matrix
  ``W = L^{-1}`` (``Ψ = L L^H``, Cholesky) is fixed and every image readout's coils become ``W d``, so that the noise
  has identity covariance. If noise and image readouts have different dwell times (``sample_time_us``) ``W`` is
  multiplied by ``sqrt(image dwell / noise dwell)``: white noise variance per sample is inversely proportional to the
  dwell time, so the noise in the image data is ``Ψ · noise dwell / image dwell`` (the dwell-time ratio Gadgetron's
  noise adjustment also applies; its extra receiver-bandwidth and ``sqrt(2)`` factors only rescale and are left out).
  Prewhitened k-space is in units of the noise standard deviation per coil ("SNR units", Kellman & McVeigh, MRM
  2005), and so are the reconstructions (the exported graph normalises its input and scales back);
* **oversampling removal**, exact: per readout as it arrives (as Gadgetron's RemoveROOversamplingGadget does, so
  that completing a slice costs only the phase-encode step), centred inverse FFT along the readout (orthonormal,
  length ``Nx``), keep the central ``H`` image samples (the field of view without oversampling), FFT back
  (:func:`readout_spectrum`); averaging is linear, so it commutes with this. A readout oversampled by zero-padding
  its image along the readout is recovered exactly;
* readouts that are not image data are **set aside and counted** by reason (:data:`SET_ASIDE_FLAGS`): phase
  correction, navigator, feedback, dummy scans, calibration-only lines (``ACQ_IS_PARALLEL_CALIBRATION`` without
  ``ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING``: those are image lines too) and so on.

:class:`SliceAssembler` is the one incremental path: :meth:`~SliceAssembler.add` one
:class:`~compressor.data.mrd_readout.Readout` at a time (a slice is complete at the readout flagged
``ACQ_LAST_IN_SLICE`` of the last average), :meth:`~SliceAssembler.finish` at the end of data. Before anything is
allocated it checks the sizes the sender announced against :class:`~compressor.data.mrd_limits.AssemblyLimits`
(coils, samples, the header's encoded readout, open slices) and reserves the bytes it will hold (slice buffers, the
noise covariance) from a :class:`~compressor.data.mrd_limits.ByteBudget`; a readout holding NaN or Inf is refused
before any transform touches it. The header is read by
:mod:`compressor.data.mrd_header`, acquisitions are adapted by :mod:`compressor.data.mrd_readout` (ISMRMRD) and
:mod:`compressor.data.mrd_v2` (MRD v2), and :mod:`compressor.data.ismrmrd_file` reads an ISMRMRD HDF5 file through
this same path.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import ismrmrd
import numpy as np

from compressor.data.mrd_header import EncodingGeometry
from compressor.data.mrd_limits import AssemblyLimits, ByteBudget
from compressor.data.mrd_readout import AcquisitionInfo, Readout, SliceKey
from compressor.errors import InputError

SET_ASIDE_FLAGS: tuple[tuple[int, str], ...] = (
    (ismrmrd.ACQ_IS_PHASECORR_DATA, "phase correction"),
    (ismrmrd.ACQ_IS_NAVIGATION_DATA, "navigator"),
    (ismrmrd.ACQ_IS_RTFEEDBACK_DATA, "real-time feedback"),
    (ismrmrd.ACQ_IS_HPFEEDBACK_DATA, "HP feedback"),
    (ismrmrd.ACQ_IS_DUMMYSCAN_DATA, "dummy scan"),
    (ismrmrd.ACQ_IS_SURFACECOILCORRECTIONSCAN_DATA, "surface coil correction"),
    (ismrmrd.ACQ_IS_PHASE_STABILIZATION_REFERENCE, "phase stabilisation reference"),
    (ismrmrd.ACQ_IS_PHASE_STABILIZATION, "phase stabilisation"),
)
"""Flags of readouts that are not image data, and the reason reported for setting them aside (first match wins)."""

CALIBRATION_ONLY = "parallel calibration only"


@dataclass(frozen=True)
class AssembledSlice:
    """One image's k-space on the tool's grid.

    Attributes:
        key: the slice's indices.
        kspace: ``(coils, H, W)`` complex64, **uncentred**, orthonormal; prewhitened (if there were noise readouts),
            readout oversampling removed; zero on lines not acquired.
        acquired_lines: ``(W,)`` bool, uncentred (the same column order as ``kspace``): lines acquired at least once.
        readout_sampled: ``(H,)`` bool, uncentred: readout positions every acquired line sampled. An asymmetric echo
            or discarded samples leave positions out; with oversampling the missing stretch is mapped to the nearest
            position on the ``H`` grid (the removal's interpolation smears the edge of the gap, so this is exact only
            without oversampling).
        averages: the largest number of times one line was acquired (and averaged).
        info: the header fields of the readout nearest the k-space centre line (the first such readout).
    """

    key: SliceKey
    kspace: np.ndarray
    acquired_lines: np.ndarray
    readout_sampled: np.ndarray
    averages: int
    info: AcquisitionInfo


@dataclass
class _SliceBuffer:
    """Sums of the placed readouts of one slice: ``(coils, H, W)``, each readout already without oversampling and
    uncentred along the readout (:func:`readout_spectrum`), columns on the centred phase-encode grid."""

    sums: np.ndarray
    counts: np.ndarray
    sampled: np.ndarray
    info: AcquisitionInfo
    centre_distance: int
    reserved: int


@dataclass(frozen=True)
class NoiseStatistics:
    """Accumulated noise readouts: ``Σ n n^H`` ``(coils, coils)`` complex128 over ``samples`` samples."""

    outer_sum: np.ndarray
    samples: int
    sample_time_us: float

    def prewhitening(self, image_sample_time_us: float, source: str | Path) -> np.ndarray:
        """``W`` ``(coils, coils)`` complex128 with ``W Ψ W^H = I`` (module docstring), scaled for the dwell times."""
        covariance = self.outer_sum / self.samples
        try:
            lower = np.linalg.cholesky(covariance)
        except np.linalg.LinAlgError:
            raise InputError("the noise covariance of the noise acquisitions is not positive definite (a dead coil, "
                             "or too few noise samples)", source) from None
        whitening = np.linalg.inv(lower)
        if self.sample_time_us > 0 and image_sample_time_us > 0:
            whitening = whitening * np.sqrt(image_sample_time_us / self.sample_time_us)
        return whitening


class SliceAssembler:
    """Readouts in, :class:`AssembledSlice` out, incrementally (module docstring for every convention).

    Args:
        geometry: the header's encoding.
        source: the file or stream named in error messages.
        limits: the caps on coils, samples, the encoded readout and open slices (default :class:`AssemblyLimits`'s).
        budget: where the bytes held are reserved (``None``: an unbounded budget of its own).

    Attributes:
        skipped: readouts set aside, by reason (:data:`SET_ASIDE_FLAGS`, ``"parallel calibration only"``).
        noise_readouts: noise readouts received (used for prewhitening until the first image readout).
        image_readouts: image readouts placed.
    """

    def __init__(self, geometry: EncodingGeometry, source: str | Path, limits: AssemblyLimits | None = None,
                 budget: ByteBudget | None = None):
        self.geometry = geometry
        self.source = source
        self.limits = limits if limits is not None else AssemblyLimits()
        self.budget = budget if budget is not None else ByteBudget(None, "the assembly")
        self.skipped: Counter[str] = Counter()
        self.noise_readouts = 0
        self.image_readouts = 0
        self._noise: NoiseStatistics | None = None
        self._whitening: np.ndarray | None = None
        self._whitening_fixed = False
        self._buffers: dict[SliceKey, _SliceBuffer] = {}
        self._completed: set[SliceKey] = set()
        if geometry.encoded_matrix[0] > self.limits.max_samples:
            raise InputError(f"the header's encoded readout has {geometry.encoded_matrix[0]} samples, more than the "
                             f"{self.limits.max_samples} allowed (--max-samples)", source)

    @property
    def open_slices(self) -> int:
        """Slices begun and not complete."""
        return len(self._buffers)

    @property
    def prewhitening(self) -> np.ndarray | None:
        """The prewhitening matrix ``(coils, coils)`` applied to image readouts, ``None`` without noise readouts."""
        return self._whitening

    def add(self, readout: Readout) -> list[AssembledSlice]:
        """Take one readout; return the slices it completes (at most one: its key's, on ``ACQ_LAST_IN_SLICE`` of the
        last average)."""
        self._check(readout)
        if readout.has_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
            self.noise_readouts += 1
            if not self._whitening_fixed:
                self._accumulate_noise(readout)
            return []
        reason = self._set_aside_reason(readout)
        if reason is not None:
            self.skipped[reason] += 1
            return []
        if readout.key in self._completed:
            raise InputError(f"a readout for slice {tuple(readout.key)} after it was complete: the header's "
                             f"encodingLimits.average maximum is {self.geometry.average_maximum} but average "
                             f"{readout.average} arrived (NEX > 1 data with a header without that limit, or slice "
                             "indices repeated)", self.source)
        self._place(readout)
        self.image_readouts += 1
        last_average = readout.average >= self.geometry.average_maximum
        if readout.has_flag(ismrmrd.ACQ_LAST_IN_SLICE) and last_average:
            return [self._complete(readout.key)]
        return []

    def finish(self) -> list[AssembledSlice]:
        """Complete every slice still open (end of file, or the stream closed), in order of their first readout."""
        return [self._complete(key) for key in list(self._buffers)]

    def _check(self, readout: Readout) -> None:
        """Refuse a readout over :attr:`limits` or holding NaN or Inf, before it is transformed or stored."""
        noise = readout.has_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
        what = "a noise readout" if noise else (f"a readout of slice {tuple(readout.key)} (kspace_encode_step_1 "
                                                f"{readout.kspace_encode_step_1})")
        self.limits.check_readout(*readout.data.shape, what, self.source)
        if not np.isfinite(readout.data).all():
            raise InputError(f"{what} contains NaN or Inf", self.source)

    @staticmethod
    def _set_aside_reason(readout: Readout) -> str | None:
        for flag, reason in SET_ASIDE_FLAGS:
            if readout.has_flag(flag):
                return reason
        if (readout.has_flag(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)
                and not readout.has_flag(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)):
            return CALIBRATION_ONLY
        return None

    def _accumulate_noise(self, readout: Readout) -> None:
        data = readout.data.astype(np.complex128)
        if self._noise is not None and self._noise.outer_sum.shape[0] != data.shape[0]:
            raise InputError(f"noise acquisitions have {self._noise.outer_sum.shape[0]} and {data.shape[0]} coils",
                             self.source)
        if self._noise is None:
            self.budget.reserve(data.shape[0] ** 2 * 16, f"the noise covariance of {data.shape[0]} coils",
                                self.source)
        outer = data @ data.conj().T
        if self._noise is None:
            self._noise = NoiseStatistics(outer, data.shape[1], readout.sample_time_us)
        else:
            self._noise = NoiseStatistics(self._noise.outer_sum + outer, self._noise.samples + data.shape[1],
                                          self._noise.sample_time_us)

    def _fix_whitening(self, readout: Readout) -> None:
        """At the first image readout: the prewhitening matrix from the noise seen so far (none without noise)."""
        self._whitening_fixed = True
        if self._noise is None:
            return
        if self._noise.outer_sum.shape[0] != readout.data.shape[0]:
            raise InputError(f"noise acquisitions have {self._noise.outer_sum.shape[0]} coils but image "
                             f"acquisitions {readout.data.shape[0]}", self.source)
        self._whitening = self._noise.prewhitening(readout.sample_time_us, self.source)

    def _centred_column(self, readout: Readout) -> int:
        width = self.geometry.encoded_matrix[1]
        column = readout.kspace_encode_step_1 - self.geometry.step1_center + width // 2
        if not 0 <= column < width:
            raise InputError(f"acquisition line kspace_encode_step_1 = {readout.kspace_encode_step_1} lies outside "
                             f"the {width} encoded lines (centre {self.geometry.step1_center})", self.source)
        return column

    def _centred_rows(self, readout: Readout) -> tuple[slice, slice]:
        """Where the readout's kept samples go on the centred encoded readout, and which samples those are, in
        k-order (flipped for a reversed readout, whose discards count in acquisition order: module docstring)."""
        samples = readout.data.shape[1]
        encoded_x = self.geometry.encoded_matrix[0]
        dropped_first, dropped_last = readout.discard_pre, readout.discard_post
        if readout.has_flag(ismrmrd.ACQ_IS_REVERSE):
            dropped_first, dropped_last = dropped_last, dropped_first
        first, stop = dropped_first, samples - dropped_last
        offset = encoded_x // 2 - readout.center_sample
        if stop <= first or first + offset < 0 or stop + offset > encoded_x:
            raise InputError(f"a readout of {samples} samples (centre sample {readout.center_sample}, discarding "
                             f"{readout.discard_pre}+{readout.discard_post}) does not fit the encoded readout of "
                             f"{encoded_x} samples", self.source)
        return slice(first + offset, stop + offset), slice(first, stop)

    def _place(self, readout: Readout) -> None:
        if not self._whitening_fixed:
            self._fix_whitening(readout)
        data = readout.data[:, ::-1] if readout.has_flag(ismrmrd.ACQ_IS_REVERSE) else readout.data
        if self._whitening is not None:
            data = self._whitening @ data
        column = self._centred_column(readout)
        rows, samples = self._centred_rows(readout)
        coils = data.shape[0]
        encoded_x, width = self.geometry.encoded_matrix[:2]
        readout_length = self.geometry.recon_matrix[0]
        buffer = self._buffers.get(readout.key)
        if buffer is None:
            buffer = self._open(readout, coils)
        if buffer.sums.shape[0] != coils:
            raise InputError(f"slice {tuple(readout.key)} has acquisitions with {buffer.sums.shape[0]} and {coils} "
                             "coils", self.source)
        placed = np.zeros((coils, encoded_x), np.complex128)
        placed[:, rows] = data[:, samples]
        buffer.sums[:, :, column] += readout_spectrum(placed, readout_length)
        buffer.counts[column] += 1
        kept = np.zeros(encoded_x, bool)
        kept[rows] = True
        buffer.sampled &= kept
        distance = abs(column - width // 2)
        if distance < buffer.centre_distance:
            buffer.info, buffer.centre_distance = readout.info, distance

    def _open(self, readout: Readout, coils: int) -> _SliceBuffer:
        """A new slice's buffer, once the open-slice cap and the budget allow it."""
        if len(self._buffers) >= self.limits.max_open_slices:
            raise InputError(f"slice {tuple(readout.key)} would be the {len(self._buffers) + 1}th slice open at once, "
                             f"more than the {self.limits.max_open_slices} allowed (--max-open-slices)", self.source)
        encoded_x, width = self.geometry.encoded_matrix[:2]
        readout_length = self.geometry.recon_matrix[0]
        nbytes = coils * readout_length * width * 16 + width * 8 + encoded_x
        self.budget.reserve(nbytes, f"slice {tuple(readout.key)} ({coils} coils x {readout_length} x {width})",
                            self.source)
        buffer = _SliceBuffer(np.zeros((coils, readout_length, width), np.complex128), np.zeros(width, np.int64),
                              np.ones(encoded_x, bool), readout.info, width, nbytes)
        self._buffers[readout.key] = buffer
        return buffer

    def _complete(self, key: SliceKey) -> AssembledSlice:
        buffer = self._buffers.pop(key)
        self._completed.add(key)
        self.budget.release(buffer.reserved)
        acquired = buffer.counts > 0
        sums = buffer.sums if buffer.counts.max(initial=0) <= 1 else buffer.sums / np.maximum(buffer.counts, 1)
        return AssembledSlice(
            key=key,
            kspace=phase_encode_spectrum(sums, np.complex64),
            acquired_lines=np.fft.ifftshift(acquired),
            readout_sampled=np.fft.ifftshift(_sampled_after_removal(buffer.sampled, self.geometry.recon_matrix[0])),
            averages=int(buffer.counts.max()),
            info=buffer.info)


def phase_ramp(length: int) -> np.ndarray:
    """``exp(-2 pi i k (N // 2) / N)`` ``(N,)`` complex128 over uncentred frequencies ``k``: ``fft(fftshift(y)) =
    fft(y) * phase_ramp(N)`` ((-1)^k for even ``N``)."""
    return np.exp(-2j * np.pi * np.arange(length) * (length // 2) / length)


def readout_spectrum(centred: np.ndarray, readout_length: int) -> np.ndarray:
    """Readouts on the scanner's centred encoded readout ``(..., Nx)`` (DC at ``Nx // 2``, oversampled) as the tool's
    ``(..., readout_length)`` complex128: uncentred, the orthonormal FFT of the readout's image profile as the scanner
    shows it (FOV centre at ``N // 2``), oversampling removed.

    Centred orthonormal inverse FFT, the central ``readout_length`` image samples (from ``Nx // 2 - readout_length //
    2``, so the FOV centres stay aligned), orthonormal FFT; without oversampling the same as
    :func:`phase_encode_spectrum`'s ``ifftshift`` times :func:`phase_ramp`, to rounding.
    """
    encoded = centred.shape[-1]
    profile = np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(centred, axes=-1), norm="ortho"), axes=-1)
    start = encoded // 2 - readout_length // 2
    return np.fft.fft(profile[..., start:start + readout_length], norm="ortho")


def phase_encode_spectrum(columns: np.ndarray, dtype: type | None = None) -> np.ndarray:
    """k-space ``(..., W)`` on the scanner's centred phase-encode grid (DC at ``W // 2``) as the tool's: uncentred,
    the FFT of the image as the scanner shows it, ``fft(fftshift(ifft(ifftshift(c)))) = ifftshift(c) *
    phase_ramp(W)``, applied as that pointwise product so that lines not acquired stay exactly zero. Computed in the
    inputs' precision and stored as ``dtype`` (default: that precision) in one pass, the shift done by the two
    products' destinations: completing a slice is on a streaming server's critical path."""
    width = columns.shape[-1]
    half, ramp = width // 2, phase_ramp(width)
    shifted = np.empty(columns.shape, dtype if dtype is not None else np.result_type(columns, ramp))
    np.multiply(columns[..., half:], ramp[:width - half], out=shifted[..., :width - half])
    np.multiply(columns[..., :half], ramp[width - half:], out=shifted[..., width - half:])
    return shifted


def _sampled_after_removal(sampled: np.ndarray, length: int) -> np.ndarray:
    """Centred ``(Nx,)`` sampled positions -> centred ``(length,)``: position ``i`` (frequency ``i - length // 2``)
    is the oversampled position ``Nx // 2 + round((i - length // 2) * Nx / length)`` (same k, finer spacing)."""
    encoded = sampled.size
    positions = encoded // 2 + np.round((np.arange(length) - length // 2) * encoded / length).astype(int)
    return sampled[np.clip(positions, 0, encoded - 1)]


def skipped_summary(skipped: dict[str, int], noise_readouts: int) -> str:
    """One line saying which acquisitions were not image data, e.g. ``"32 noise (prewhitening), 3 navigator"``;
    empty when none."""
    parts = ([f"{noise_readouts} noise (prewhitening)"] if noise_readouts else [])
    parts += [f"{count} {reason}" for reason, count in skipped.items()]
    return ", ".join(parts)
