r"""ISMRMRD (MRD) raw acquisitions assembled into one k-space per slice, the same way for files and for streams.

An MRD scan is an XML header (the encoding: matrix sizes, field of view, ``kspace_encoding_step_1`` limits,
trajectory) followed by acquisitions, one readout each: ``(coils, samples)`` complex samples of one phase-encode line,
with its indices (``kspace_encode_step_1``, ``average``, ``slice``, ``contrast``, ``phase``, ``repetition``, ``set``),
flags and geometry. This module turns them into :class:`AssembledSlice` records on the tool's image grid:

* **grid**: ``(H, W)`` = (readout after oversampling removal, phase-encode), ``H = reconSpace.matrixSize.x`` and
  ``W = encodedSpace.matrixSize.y``: the phase-encode axis is kept whole, as
  :class:`~compressor.data.readers.FastMRIReader` does (:attr:`EncodingGeometry.image_shape`);
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

:class:`SliceAssembler` is the one incremental path: :meth:`~SliceAssembler.add` one :class:`Readout` at a time
(a slice is complete at the readout flagged ``ACQ_LAST_IN_SLICE`` of the last average),
:meth:`~SliceAssembler.finish` at the end of data. :func:`readout_from_ismrmrd` adapts an ``ismrmrd.Acquisition``;
:func:`read_ismrmrd_file` reads an ISMRMRD HDF5 file through the same path.
"""

from __future__ import annotations

import ctypes
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import h5py
import ismrmrd
import numpy as np

from compressor.errors import InputError, first_line

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
READ_CHUNK = 4096  # acquisitions read from a file at a time
HEAD_BYTES = ctypes.sizeof(ismrmrd.AcquisitionHeader)
NOISE = "noise"


def _flag_set(flags: int, flag: int) -> bool:
    """Whether ISMRMRD ``flag`` (1-based bit number, ``ismrmrd.ACQ_*``) is set in ``flags``."""
    return bool(int(flags) & (1 << (flag - 1)))


# --------------------------------------------------------------------------------------------------- the header
@dataclass(frozen=True)
class EncodingGeometry:
    """The one Cartesian 2-D encoding space of an ISMRMRD header.

    Attributes:
        encoded_matrix: ``(x, y, z)`` encoded matrix: ``x`` the readout samples *with* oversampling, ``y`` the
            phase-encode lines, ``z`` 1 (2-D).
        recon_matrix: ``(x, y, z)`` reconstructed matrix (``x`` without readout oversampling).
        encoded_fov_mm, recon_fov_mm: ``(x, y, z)`` fields of view in millimetres.
        step1_minimum, step1_maximum, step1_center: ``encodingLimits.kspace_encoding_step_1`` (the acquired
            phase-encode counters and the counter of the k-space centre line).
        average_maximum: ``encodingLimits.average.maximum`` (0 when absent): the last average's index.
        trajectory: ``"cartesian"``.
    """

    encoded_matrix: tuple[int, int, int]
    recon_matrix: tuple[int, int, int]
    encoded_fov_mm: tuple[float, float, float]
    recon_fov_mm: tuple[float, float, float]
    step1_minimum: int
    step1_maximum: int
    step1_center: int
    average_maximum: int
    trajectory: str

    @property
    def readout_oversampling(self) -> float:
        """Encoded over reconstructed readout samples (2.0 for the usual 2x oversampled readout)."""
        return self.encoded_matrix[0] / self.recon_matrix[0]

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(H, W)``: readout samples after oversampling removal, encoded phase-encode lines (kept whole)."""
        return self.recon_matrix[0], self.encoded_matrix[1]

    @property
    def image_fov_mm(self) -> tuple[float, float, float]:
        """Field of view of the ``(H, W)`` grid in mm as ISMRMRD ``(x readout, y phase, z slice)``: the readout's
        from the recon space (oversampling removed), the phase-encode's from the encoded space (kept whole)."""
        return self.recon_fov_mm[0], self.encoded_fov_mm[1], self.recon_fov_mm[2]

    @classmethod
    def from_xml(cls, xml_text: str | bytes, source: str | Path) -> EncodingGeometry:
        """Parse an ISMRMRD XML header; refuse (:class:`InputError` naming ``source``) what is not one 2-D Cartesian
        encoding space that this tool can reconstruct."""
        try:
            header = ismrmrd.xsd.CreateFromDocument(xml_text)
        except Exception as error:  # xsdata and the XML parsers raise many unrelated types for malformed documents
            raise InputError(f"the ISMRMRD XML header cannot be parsed ({first_line(error)})", source) from None
        return cls.from_header(header, source)

    @classmethod
    def from_header(cls, header: ismrmrd.xsd.ismrmrdHeader, source: str | Path) -> EncodingGeometry:
        """The geometry of a parsed ISMRMRD header (as :class:`ismrmrd.ProtocolDeserializer` hands it over), with
        the refusals of :meth:`from_xml`."""
        if not header.encoding:
            raise InputError("the ISMRMRD XML header has no encoding", source)
        if len(header.encoding) > 1:
            raise InputError(f"the ISMRMRD XML header has {len(header.encoding)} encoding spaces; only scans with "
                             "one are supported", source)
        encoding = header.encoding[0]
        trajectory = getattr(encoding.trajectory, "value", str(encoding.trajectory))
        if trajectory != "cartesian":
            raise InputError(f"trajectory {trajectory!r} is not Cartesian; only Cartesian scans are supported", source)
        encoded, recon = encoding.encodedSpace, encoding.reconSpace
        limits = encoding.encodingLimits
        _require_elements(encoding, source)
        step2 = limits.kspace_encoding_step_2
        if encoded.matrixSize.z > 1 or (step2 is not None and step2.maximum > 0):
            raise InputError(f"3-D encoding (encoded matrix z = {encoded.matrixSize.z}"
                             f"{'' if step2 is None else f', kspace_encoding_step_2 up to {step2.maximum}'}); only "
                             "2-D scans are supported", source)
        step1 = limits.kspace_encoding_step_1
        if step1 is None:
            raise InputError("the encoding limits have no kspace_encoding_step_1", source)
        geometry = cls(
            encoded_matrix=(encoded.matrixSize.x, encoded.matrixSize.y, encoded.matrixSize.z),
            recon_matrix=(recon.matrixSize.x, recon.matrixSize.y, recon.matrixSize.z),
            encoded_fov_mm=(encoded.fieldOfView_mm.x, encoded.fieldOfView_mm.y, encoded.fieldOfView_mm.z),
            recon_fov_mm=(recon.fieldOfView_mm.x, recon.fieldOfView_mm.y, recon.fieldOfView_mm.z),
            step1_minimum=step1.minimum, step1_maximum=step1.maximum, step1_center=step1.center,
            average_maximum=limits.average.maximum if limits.average is not None else 0,
            trajectory=trajectory)
        geometry._check(source)
        return geometry

    def _check(self, source: str | Path) -> None:
        """Refuse an empty matrix, or a recon readout longer than the encoded one (interpolation)."""
        encoded_x, encoded_y = self.encoded_matrix[:2]
        recon_x = self.recon_matrix[0]
        if min(encoded_x, encoded_y, recon_x) < 1:
            raise InputError(f"the encoded matrix {encoded_x}x{encoded_y} or recon readout {recon_x} is empty", source)
        if recon_x > encoded_x:
            raise InputError(f"the recon matrix readout ({recon_x}) is larger than the encoded one ({encoded_x}): "
                             "readout interpolation is not supported, only oversampling removal", source)


def _require_elements(encoding: ismrmrd.xsd.encodingType, source: str | Path) -> None:
    """Refuse an encoding without the elements the geometry is read from: xsdata's parser refuses a document without
    them, but header objects built in code (a deserializer's, :mod:`compressor.data.mrd_v2`'s) may hold ``None``."""
    required = {"encodingLimits": encoding.encodingLimits}
    for space_name in ("encodedSpace", "reconSpace"):
        space = getattr(encoding, space_name)
        required[space_name] = space
        if space is not None:
            required[f"{space_name}.matrixSize"] = space.matrixSize
            required[f"{space_name}.fieldOfView_mm"] = space.fieldOfView_mm
    missing = [name for name, element in required.items() if element is None]
    if missing:
        raise InputError(f"the ISMRMRD XML header's encoding has no {', '.join(missing)}", source)


# --------------------------------------------------------------------------------------------------- readouts
class SliceKey(NamedTuple):
    """The acquisition indices that tell images apart: one assembled slice (one image) per key. ``average`` is not
    part of it: averages of a line are averaged."""

    slice: int
    contrast: int
    phase: int
    repetition: int
    set: int


@dataclass(frozen=True)
class AcquisitionInfo:
    """A readout's geometry and identity, carried over to the image header (ISMRMRD conventions: positions in mm
    in the patient coordinate system, unit direction cosines, time stamps in scanner ticks)."""

    position: tuple[float, float, float]
    read_dir: tuple[float, float, float]
    phase_dir: tuple[float, float, float]
    slice_dir: tuple[float, float, float]
    patient_table_position: tuple[float, float, float]
    measurement_uid: int
    acquisition_time_stamp: int
    physiology_time_stamp: tuple[int, int, int]


@dataclass(frozen=True)
class Readout:
    """One acquisition, independent of the MRD library that read it.

    Attributes:
        data: ``(coils, samples)`` complex64, as acquired (reversed if ``ACQ_IS_REVERSE`` is set, centred on
            ``center_sample``).
        flags: the ISMRMRD flag bits (``ismrmrd.ACQ_*`` are 1-based bit numbers).
        kspace_encode_step_1: the phase-encode counter.
        key: the image it belongs to.
        average: the ``average`` index.
        center_sample: the sample index of k-space centre along the readout (in ``data`` flipped, for a reversed
            readout: module docstring).
        discard_pre, discard_post: samples to drop at the start and end of the acquisition (acquisition order: for a
            reversed readout, at the end and start of ``data`` flipped).
        sample_time_us: dwell time in microseconds (0 if unknown).
        info: geometry and identity for the image header.
    """

    data: np.ndarray
    flags: int
    kspace_encode_step_1: int
    key: SliceKey
    average: int
    center_sample: int
    discard_pre: int
    discard_post: int
    sample_time_us: float
    info: AcquisitionInfo

    def has_flag(self, flag: int) -> bool:
        """Whether ``ismrmrd.ACQ_*`` ``flag`` is set."""
        return _flag_set(self.flags, flag)


def float_triple(values) -> tuple[float, float, float]:
    """A header's 3-vector (an ISMRMRD ctypes array, an MRD v2 ``(3,)`` array) as three Python floats."""
    return tuple(float(value) for value in np.asarray(values, dtype=np.float64).reshape(3))


def readout_from_ismrmrd(acquisition: ismrmrd.Acquisition, source: str | Path = "acquisition") -> Readout:
    """The :class:`Readout` of an ``ismrmrd.Acquisition``; its data must be ``(active_channels, number_of_samples)``
    (:class:`InputError` naming ``source`` otherwise)."""
    data = np.asarray(acquisition.data)
    expected = (acquisition.active_channels, acquisition.number_of_samples)
    if data.shape != expected:
        raise InputError(f"acquisition {acquisition.scan_counter} holds {data.size} samples but its header says "
                         f"{expected[1]} samples x {expected[0]} channels", source)
    idx = acquisition.idx
    info = AcquisitionInfo(
        position=float_triple(acquisition.position), read_dir=float_triple(acquisition.read_dir),
        phase_dir=float_triple(acquisition.phase_dir), slice_dir=float_triple(acquisition.slice_dir),
        patient_table_position=float_triple(acquisition.patient_table_position),
        measurement_uid=int(acquisition.measurement_uid),
        acquisition_time_stamp=int(acquisition.acquisition_time_stamp),
        physiology_time_stamp=tuple(int(value) for value in acquisition.physiology_time_stamp))
    return Readout(
        data=data.astype(np.complex64), flags=int(acquisition.flags),
        kspace_encode_step_1=int(idx.kspace_encode_step_1),
        key=SliceKey(int(idx.slice), int(idx.contrast), int(idx.phase), int(idx.repetition), int(idx.set)),
        average=int(idx.average), center_sample=int(acquisition.center_sample),
        discard_pre=int(acquisition.discard_pre), discard_post=int(acquisition.discard_post),
        sample_time_us=float(acquisition.sample_time_us), info=info)


# --------------------------------------------------------------------------------------------------- assembly
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

    Attributes:
        skipped: readouts set aside, by reason (:data:`SET_ASIDE_FLAGS`, ``"parallel calibration only"``).
        noise_readouts: noise readouts received (used for prewhitening until the first image readout).
        image_readouts: image readouts placed.
    """

    def __init__(self, geometry: EncodingGeometry, source: str | Path):
        self.geometry = geometry
        self.source = source
        self.skipped: Counter[str] = Counter()
        self.noise_readouts = 0
        self.image_readouts = 0
        self._noise: NoiseStatistics | None = None
        self._whitening: np.ndarray | None = None
        self._whitening_fixed = False
        self._buffers: dict[SliceKey, _SliceBuffer] = {}
        self._completed: set[SliceKey] = set()

    @property
    def prewhitening(self) -> np.ndarray | None:
        """The prewhitening matrix ``(coils, coils)`` applied to image readouts, ``None`` without noise readouts."""
        return self._whitening

    def add(self, readout: Readout) -> list[AssembledSlice]:
        """Take one readout; return the slices it completes (at most one: its key's, on ``ACQ_LAST_IN_SLICE`` of the
        last average)."""
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
            buffer = _SliceBuffer(np.zeros((coils, readout_length, width), np.complex128), np.zeros(width, np.int64),
                                  np.ones(encoded_x, bool), readout.info, width)
            self._buffers[readout.key] = buffer
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

    def _complete(self, key: SliceKey) -> AssembledSlice:
        buffer = self._buffers.pop(key)
        self._completed.add(key)
        acquired = buffer.counts > 0
        kspace = phase_encode_spectrum(buffer.sums / np.maximum(buffer.counts, 1))
        return AssembledSlice(
            key=key,
            kspace=kspace.astype(np.complex64),
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


def phase_encode_spectrum(columns: np.ndarray) -> np.ndarray:
    """k-space ``(..., W)`` on the scanner's centred phase-encode grid (DC at ``W // 2``) as the tool's: uncentred,
    the FFT of the image as the scanner shows it, ``fft(fftshift(ifft(ifftshift(c)))) = ifftshift(c) *
    phase_ramp(W)``, applied as that pointwise product so that lines not acquired stay exactly zero."""
    return np.fft.ifftshift(columns, axes=-1) * phase_ramp(columns.shape[-1])


def _sampled_after_removal(sampled: np.ndarray, length: int) -> np.ndarray:
    """Centred ``(Nx,)`` sampled positions -> centred ``(length,)``: position ``i`` (frequency ``i - length // 2``)
    is the oversampled position ``Nx // 2 + round((i - length // 2) * Nx / length)`` (same k, finer spacing)."""
    encoded = sampled.size
    positions = encoded // 2 + np.round((np.arange(length) - length // 2) * encoded / length).astype(int)
    return sampled[np.clip(positions, 0, encoded - 1)]


# --------------------------------------------------------------------------------------------------- files
@dataclass(frozen=True)
class RawScan:
    """An ISMRMRD file's image data assembled: the encoding (and the XML header it came from), the slices in order
    of completion, and what was set aside (``skipped`` by reason; ``noise_readouts`` used for prewhitening)."""

    geometry: EncodingGeometry
    slices: list[AssembledSlice]
    skipped: dict[str, int] = field(default_factory=dict)
    noise_readouts: int = 0
    xml: str = ""


def _acquisition_from_row(row: np.void, index: int, path: Path) -> ismrmrd.Acquisition:
    """An ``ismrmrd.Acquisition`` from one row of ``/<group>/data`` (header, trajectory and data as float32 vectors);
    a header of another size or a data length that disagrees with the header is an :class:`InputError`."""
    head = np.asarray(row["head"])
    if head.nbytes != HEAD_BYTES:
        raise InputError(f"acquisition {index} has a header of {head.nbytes} bytes; an ISMRMRD acquisition header has "
                         f"{HEAD_BYTES}", path)
    acquisition = ismrmrd.Acquisition(head.tobytes())
    values = np.asarray(row["data"], dtype=np.float32)
    expected = 2 * acquisition.number_of_samples * acquisition.active_channels
    if values.size != expected:
        raise InputError(f"acquisition {index} holds {values.size} float values but its header says "
                         f"{acquisition.number_of_samples} samples x {acquisition.active_channels} channels "
                         f"({expected} values)", path)
    acquisition.data[:] = values.view(np.complex64).reshape(acquisition.active_channels,
                                                             acquisition.number_of_samples)
    return acquisition


def _xml_text(dataset: h5py.Dataset | h5py.Group, group: str, path: Path) -> str:
    """The XML header of ``/<group>/xml``: a one-element string dataset (as ``ismrmrd.Dataset`` writes it) or a
    scalar string dataset; anything else is an :class:`InputError`."""
    if not isinstance(dataset, h5py.Dataset):
        raise InputError(f"not an ISMRMRD file (/{group}/xml is a group, not the XML header)", path)
    if dataset.dtype.kind not in "OS" or dataset.shape not in ((), (1,)):
        raise InputError(f"/{group}/xml is not one string (dtype {dataset.dtype}, shape {dataset.shape})", path)
    value = dataset[()] if dataset.shape == () else dataset[0]
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def read_ismrmrd_file(path: Path, group: str = "dataset") -> RawScan:
    """Read an ISMRMRD HDF5 file (``/<group>/xml`` header, ``/<group>/data`` acquisitions) and assemble its slices
    with :class:`SliceAssembler`; every problem is an :class:`InputError` naming ``path``."""
    path = Path(path)
    if not path.is_file():
        raise InputError("input file not found", path)
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise InputError(f"not an HDF5 file ({error})", path) from None
    with file:
        for name in ("xml", "data"):
            if f"{group}/{name}" not in file:
                raise InputError(f"not an ISMRMRD file (no /{group}/{name})", path)
        xml = _xml_text(file[f"{group}/xml"], group, path)
        geometry = EncodingGeometry.from_xml(xml, path)
        rows = file[f"{group}/data"]
        fields = set(rows.dtype.names or ()) if isinstance(rows, h5py.Dataset) else set()
        if not {"head", "data"} <= fields:
            raise InputError(f"not an ISMRMRD file (/{group}/data is not a table of acquisitions)", path)
        assembler = SliceAssembler(geometry, path)
        slices: list[AssembledSlice] = []
        for start in range(0, len(rows), READ_CHUNK):  # bounded memory for long scans
            for index, row in enumerate(rows[start:start + READ_CHUNK], start):
                slices += assembler.add(readout_from_ismrmrd(_acquisition_from_row(row, index, path), path))
    slices += assembler.finish()
    if not slices:
        if assembler.noise_readouts and not assembler.skipped:
            raise InputError(f"the file holds only noise acquisitions ({assembler.noise_readouts}), no image data",
                             path)
        raise InputError(f"the file holds no image acquisitions (set aside: "
                         f"{skipped_summary(assembler.skipped, assembler.noise_readouts)})", path)
    return RawScan(geometry, slices, dict(assembler.skipped), assembler.noise_readouts, xml)


def skipped_summary(skipped: dict[str, int], noise_readouts: int) -> str:
    """One line saying which acquisitions were not image data, e.g. ``"32 noise (prewhitening), 3 navigator"``;
    empty when none."""
    parts = ([f"{noise_readouts} noise (prewhitening)"] if noise_readouts else [])
    parts += [f"{count} {reason}" for reason, count in skipped.items()]
    return ", ".join(parts)
