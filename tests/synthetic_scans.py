r"""Synthetic ISMRMRD scans with a known answer, for tests and benchmarks of the MRD raw-data path.

:func:`synthetic_scan` turns coil images into what a Cartesian 2-D scanner sends: an ISMRMRD XML header and
``ismrmrd.Acquisition`` readouts in scanner order (noise scans first, then per repetition, per slice, per average the
acquired phase-encode lines, each line once per contrast, as a multi-echo sequence reads its echoes), with the usual
flags and a per-slice geometry, plus the k-space :class:`~compressor.data.mrd_raw.SliceAssembler` must give back (the
oracle). With several contrasts, every contrast of a slice is open at once and completes at its last line.

Conventions (those of :mod:`compressor.data.mrd_raw`): images are ``(H, W)`` = (readout, phase-encode); a line's
``kspace_encode_step_1`` is its centred column shifted by the header's centre line: ``column - W // 2 + center``
(default ``center = W // 2``: the counter is the centred column; a smaller centre, as with partial Fourier counters
that start at the first acquired line, shifts every counter and the header's limits with it); the readout is
oversampled by zero-padding the image along the readout, centred, to ``H * oversampling`` rows before the
orthonormal FFT, so oversampling removal recovers the image's k-space exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import ismrmrd
import numpy as np

from compressor.data.coil_simulation import SimulatedAcquisition
from compressor.data.mrd_readout import SliceKey
from compressor.io import atomic_path

SLICE_THICKNESS_MM = 5.0
DWELL_TIME_US = 5.0
TICKS_PER_READOUT = 2  # ISMRMRD time stamps count 2.5 ms ticks


@dataclass(frozen=True)
class SyntheticScan:
    """A synthetic scan and its oracle.

    Attributes:
        xml: the ISMRMRD XML header.
        acquisitions: readouts in scanner order.
        expected_kspace: per image, ``(coils, H, W)`` complex64 **uncentred** k-space of the image (before
            prewhitening), zero on lines not acquired; with an asymmetric echo and no oversampling also zero on the
            readout samples not acquired (with oversampling the removal smears the gap's edge: no exact oracle).
        acquired_lines: ``(W,)`` bool, uncentred.
        noise_covariance: ``(coils, coils)`` the covariance the noise scans were drawn with, ``None`` without them.
    """

    xml: str
    acquisitions: list[ismrmrd.Acquisition]
    expected_kspace: dict[SliceKey, np.ndarray]
    acquired_lines: np.ndarray
    noise_covariance: np.ndarray | None

    def write_ismrmrd(self, path: Path, group: str = "dataset") -> Path:
        """Write an ISMRMRD HDF5 file (``/<group>/xml``, ``/<group>/data``, the layout ``ismrmrd.Dataset`` writes),
        atomically, all acquisitions at once."""
        rows = np.zeros(len(self.acquisitions), dtype=ismrmrd.hdf5.acquisition_dtype)
        for row, acquisition in zip(rows, self.acquisitions, strict=True):
            row["head"] = np.frombuffer(acquisition.getHead(), dtype=ismrmrd.hdf5.acquisition_header_dtype)[0]
            row["data"] = np.ascontiguousarray(acquisition.data, dtype=np.complex64).view(np.float32).ravel()
            row["traj"] = np.zeros(0, np.float32)
        with atomic_path(path) as temporary, h5py.File(temporary, "w") as file:
            file.create_group(group)
            xml = file[group].create_dataset("xml", shape=(1,), dtype=h5py.special_dtype(vlen=bytes))
            xml[0] = self.xml.encode()
            file[group].create_dataset("data", data=rows, maxshape=(None,))
        return Path(path)


def encoding_header(encoded_matrix: tuple[int, int, int], recon_matrix: tuple[int, int, int],
                    encoded_fov_mm: tuple[float, float, float], recon_fov_mm: tuple[float, float, float],
                    step1: tuple[int, int, int], *, average_maximum: int = 0, slice_maximum: int = 0,
                    repetition_maximum: int = 0, contrast_maximum: int = 0, coils: int = 1,
                    bits_stored: int | None = None) -> str:
    """An ISMRMRD XML header with one Cartesian encoding space; ``step1`` is ``(minimum, maximum, center)`` of
    ``kspace_encoding_step_1``; ``bits_stored`` adds ``userParameterLong`` ``BitsStored``."""
    xsd = ismrmrd.xsd

    def space(matrix, fov):
        return xsd.encodingSpaceType(matrixSize=xsd.matrixSizeType(x=matrix[0], y=matrix[1], z=matrix[2]),
                                     fieldOfView_mm=xsd.fieldOfViewMm(x=fov[0], y=fov[1], z=fov[2]))

    limits = xsd.encodingLimitsType(
        kspace_encoding_step_0=xsd.limitType(minimum=0, maximum=encoded_matrix[0] - 1, center=encoded_matrix[0] // 2),
        kspace_encoding_step_1=xsd.limitType(minimum=step1[0], maximum=step1[1], center=step1[2]),
        kspace_encoding_step_2=xsd.limitType(minimum=0, maximum=0, center=0),
        average=xsd.limitType(minimum=0, maximum=average_maximum, center=0),
        slice=xsd.limitType(minimum=0, maximum=slice_maximum, center=0),
        contrast=xsd.limitType(minimum=0, maximum=contrast_maximum, center=0),
        repetition=xsd.limitType(minimum=0, maximum=repetition_maximum, center=0))
    parameters = None if bits_stored is None else xsd.userParametersType(
        userParameterLong=[xsd.userParameterLongType(name="BitsStored", value=bits_stored)])
    header = xsd.ismrmrdHeader(
        experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=63_650_000),
        acquisitionSystemInformation=xsd.acquisitionSystemInformationType(receiverChannels=coils),
        encoding=[xsd.encodingType(encodedSpace=space(encoded_matrix, encoded_fov_mm),
                                   reconSpace=space(recon_matrix, recon_fov_mm), encodingLimits=limits,
                                   trajectory=xsd.trajectoryType.CARTESIAN)], userParameters=parameters)
    return ismrmrd.xsd.ToXML(header)


def slice_position(slice_index: int, slices: int) -> tuple[float, float, float]:
    """The centre of slice ``slice_index`` of ``slices`` parallel transverse slices (mm, patient coordinates)."""
    return 0.0, 0.0, (slice_index - (slices - 1) / 2) * SLICE_THICKNESS_MM


def _oversampled_kspace(images: np.ndarray, oversampling: int) -> np.ndarray:
    """``(..., H, W)`` images -> ``(..., H * oversampling, W)`` **centred** orthonormal k-space of the images
    zero-padded along the readout (centred: image row ``r`` goes to ``(H * oversampling) // 2 - H // 2 + r``)."""
    height = images.shape[-2]
    padded = np.zeros((*images.shape[:-2], height * oversampling, images.shape[-1]), np.complex128)
    start = (height * oversampling) // 2 - height // 2
    padded[..., start:start + height, :] = images
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(padded, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def contrast_weighting(shape: tuple[int, int], contrast: int) -> np.ndarray:
    """``(H, W)`` weights of contrast ``contrast`` (1 for contrast 0): a ramp along the readout, so that contrasts
    differ in content, not only in scale (16-bit images are scaled to their maximum)."""
    return 1.0 + contrast * np.linspace(0.0, 1.0, shape[0])[:, None] * np.ones(shape[1])


def _acquisition(data: np.ndarray, flags: list[int], **header) -> ismrmrd.Acquisition:
    acquisition = ismrmrd.Acquisition.from_array(np.ascontiguousarray(data, dtype=np.complex64), **header)
    for flag in flags:
        acquisition.set_flag(flag)
    return acquisition


def synthetic_scan(images: np.ndarray, *, oversampling: int = 2, acquired_lines: np.ndarray | None = None,
                   averages: int = 1, repetitions: int = 1, contrasts: int = 1, noise_scans: int = 0,
                   noise_covariance: np.ndarray | None = None, reverse_odd_lines: bool = False,
                   asymmetric_echo: int = 0, step1_center: int | None = None,
                   field_of_view_mm: tuple[float, float] = (200.0, 180.0), measurement_uid: int = 1234,
                   bits_stored: int | None = None, seed: int = 0) -> SyntheticScan:
    """A Cartesian 2-D multi-slice scan of ``images`` (module docstring for the conventions).

    Args:
        images: ``(S, coils, H, W)`` coil images of ``S`` slices (complex or real); repetition ``r`` measures
            ``images * (r + 1)``, so repetitions differ.
        oversampling: integer readout oversampling (the encoded readout has ``H * oversampling`` samples).
        acquired_lines: ``(W,)`` bool, **uncentred** (like the tool's masks): the lines measured; default all.
        averages: each line is measured this many times (identically: the mean is the line).
        contrasts: each line is measured once per contrast (echo) in a row; contrast ``c`` measures the images times
            :func:`contrast_weighting` (``c``).
        noise_scans: noise readouts (``H * oversampling`` samples each) sent first, drawn with ``noise_covariance``
            (``(coils, coils)`` Hermitian positive definite; default identity), complex Gaussian, seeded by ``seed``.
        reverse_odd_lines: every second readout of a slice is sent reversed with ``ACQ_IS_REVERSE``.
        asymmetric_echo: readout samples left out at the start (the echo is off centre by that much).
        step1_center: the header's ``kspace_encoding_step_1.center``, the counter of the DC line (default ``W // 2``);
            every line's counter is ``centred column - W // 2 + step1_center`` and must be >= 0.
        field_of_view_mm: ``(readout, phase-encode)`` field of view of the ``(H, W)`` image grid.
        measurement_uid: stamped on every acquisition.
        bits_stored: the header's ``userParameterLong`` ``BitsStored`` (``None``: absent).
    """
    images = np.asarray(images)
    slices, coils, height, width = images.shape
    lines = np.ones(width, bool) if acquired_lines is None else np.asarray(acquired_lines, bool)
    centred_lines = np.flatnonzero(np.fft.fftshift(lines))
    center = width // 2 if step1_center is None else step1_center
    counters = centred_lines - width // 2 + center
    if counters.min() < 0:
        raise ValueError(f"step1_center {center} gives line counters below 0")
    encoded_x = height * oversampling
    thickness = SLICE_THICKNESS_MM
    xml = encoding_header(
        (encoded_x, width, 1), (height, width, 1),
        (field_of_view_mm[0] * oversampling, field_of_view_mm[1], thickness),
        (field_of_view_mm[0], field_of_view_mm[1], thickness),
        (int(counters.min()), int(counters.max()), center),
        average_maximum=averages - 1, slice_maximum=slices - 1, repetition_maximum=repetitions - 1,
        contrast_maximum=contrasts - 1, coils=coils, bits_stored=bits_stored)
    rng = np.random.default_rng(seed)
    acquisitions: list[ismrmrd.Acquisition] = []
    common = {"measurement_uid": measurement_uid, "sample_time_us": DWELL_TIME_US,
              "patient_table_position": (0.0, 0.0, -1200.0)}

    def stamp(header: dict) -> dict:
        count = len(acquisitions)
        return {**common, **header, "scan_counter": count + 1,
                "acquisition_time_stamp": 1000 + count * TICKS_PER_READOUT}

    covariance = None
    if noise_scans:
        covariance = np.eye(coils) if noise_covariance is None else np.asarray(noise_covariance)
        for noise in _noise(covariance, noise_scans, encoded_x, rng):
            acquisitions.append(_acquisition(noise, [ismrmrd.ACQ_IS_NOISE_MEASUREMENT],
                                             **stamp({"center_sample": encoded_x // 2})))
    loops = _Loops(slices, averages, contrasts, repetitions, centred_lines, counters,
                   slice(asymmetric_echo, encoded_x), reverse_odd_lines)
    expected: dict[SliceKey, np.ndarray] = {}
    for repetition in range(repetitions):
        measured = [images * (repetition + 1) * contrast_weighting((height, width), contrast)
                    for contrast in range(contrasts)]
        kspace = [_oversampled_kspace(item, oversampling) for item in measured]  # (S, coils, Nx, W) centred
        for slice_index in range(slices):
            for contrast in range(contrasts):
                expected[SliceKey(slice_index, contrast, 0, repetition, 0)] = _expected(
                    measured[contrast][slice_index], lines, asymmetric_echo, oversampling)
            geometry = {"position": slice_position(slice_index, slices), "read_dir": (1.0, 0.0, 0.0),
                        "phase_dir": (0.0, 1.0, 0.0), "slice_dir": (0.0, 0.0, 1.0),
                        "center_sample": encoded_x // 2 - asymmetric_echo}
            for data, flags, idx in loops.readouts(kspace, slice_index, repetition):
                acquisitions.append(_acquisition(data, flags, **stamp({**geometry, "idx": idx})))
    return SyntheticScan(xml, acquisitions, expected, lines, covariance)


@dataclass(frozen=True)
class _Loops:
    """The acquisition loops of :func:`synthetic_scan` inside one slice of one repetition: per average, per acquired
    line (centred columns and their counters), per contrast."""

    slices: int
    averages: int
    contrasts: int
    repetitions: int
    centred_lines: np.ndarray
    counters: np.ndarray
    kept: slice
    reverse_odd_lines: bool

    def readouts(self, kspace: list[np.ndarray], slice_index: int,
                 repetition: int) -> Iterator[tuple[np.ndarray, list[int], ismrmrd.EncodingCounters]]:
        """``(data (coils, samples), flags, counters)`` of each readout, from the contrasts' centred k-space."""
        last = (self.repetitions - 1, self.slices - 1, self.averages - 1, len(self.centred_lines) - 1,
                self.contrasts - 1)
        for average in range(self.averages):
            for number, (column, counter) in enumerate(zip(self.centred_lines, self.counters, strict=True)):
                for contrast in range(self.contrasts):
                    data = kspace[contrast][slice_index, :, self.kept, column]
                    flags = _line_flags(number, len(self.centred_lines), slice_index, self.slices, average,
                                        self.averages)
                    if self.reverse_odd_lines and number % 2 == 1:
                        data, flags = data[:, ::-1], [*flags, ismrmrd.ACQ_IS_REVERSE]
                    if (repetition, slice_index, average, number, contrast) == last:
                        flags.append(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
                    yield data, flags, ismrmrd.EncodingCounters(
                        kspace_encode_step_1=int(counter), average=average, slice=slice_index, contrast=contrast,
                        repetition=repetition)


def _noise(covariance: np.ndarray, count: int, samples: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` noise readouts ``(coils, samples)`` complex Gaussian of ``covariance`` ``(coils, coils)``."""
    lower = np.linalg.cholesky(covariance)
    readouts = []
    for _ in range(count):
        white = rng.standard_normal((len(lower), samples)) + 1j * rng.standard_normal((len(lower), samples))
        readouts.append(lower @ (white / np.sqrt(2)))  # unit variance per complex sample
    return readouts


def _line_flags(number: int, count: int, slice_index: int, slices: int, average: int, averages: int) -> list[int]:
    """The loop-boundary flags of line ``number`` of ``count`` in one average of one slice."""
    flags = []
    if number == 0:
        flags += [ismrmrd.ACQ_FIRST_IN_SLICE, ismrmrd.ACQ_FIRST_IN_ENCODE_STEP1, ismrmrd.ACQ_FIRST_IN_AVERAGE]
        if slice_index == 0 and average == 0:
            flags.append(ismrmrd.ACQ_FIRST_IN_REPETITION)
    if number == count - 1:
        flags += [ismrmrd.ACQ_LAST_IN_SLICE, ismrmrd.ACQ_LAST_IN_ENCODE_STEP1, ismrmrd.ACQ_LAST_IN_AVERAGE]
        if slice_index == slices - 1 and average == averages - 1:
            flags.append(ismrmrd.ACQ_LAST_IN_REPETITION)
    return flags


def _expected(coil_images: np.ndarray, lines: np.ndarray, asymmetric_echo: int, oversampling: int) -> np.ndarray:
    """The oracle: ``(coils, H, W)`` uncentred orthonormal k-space of the coil images, zero on lines not acquired
    (and, without oversampling, on the asymmetric echo's missing samples)."""
    kspace = np.fft.fft2(coil_images, norm="ortho") * lines
    if asymmetric_echo and oversampling == 1:
        sampled = np.ones(coil_images.shape[-2], bool)
        sampled[:asymmetric_echo] = False
        kspace = kspace * np.fft.ifftshift(sampled)[:, None]
    return kspace.astype(np.complex64)


def write_simulated_scan(path: Path, scan: SimulatedAcquisition, lines: np.ndarray | None = None) -> None:
    """A simulated scan (:mod:`compressor.data.coil_simulation`) as an ISMRMRD raw file, as a scanner sends it: its
    noise readouts, then its noisy image readouts of the lines set in ``lines`` ``(W,)`` bool, **uncentred** (default
    all; a readout's counter is its centred column), the last one flagged ``ACQ_LAST_IN_SLICE``."""
    geometry = scan.geometry
    xml = encoding_header(geometry.encoded_matrix, geometry.recon_matrix, geometry.encoded_fov_mm,
                          geometry.recon_fov_mm, (geometry.step1_minimum, geometry.step1_maximum,
                                                  geometry.step1_center), coils=len(scan.covariance))
    width = geometry.encoded_matrix[1]
    acquired = np.fft.fftshift(np.ones(width, bool) if lines is None else np.asarray(lines, bool))
    image_readouts = [readout for readout in scan.noisy if acquired[readout.kspace_encode_step_1]]
    last_in_slice = 1 << (ismrmrd.ACQ_LAST_IN_SLICE - 1)
    flags = [readout.flags for readout in scan.noise_scan] + [
        last_in_slice if number == len(image_readouts) - 1 else 0 for number in range(len(image_readouts))]
    acquisitions = []
    for readout, flag_bits in zip(scan.noise_scan + tuple(image_readouts), flags, strict=True):
        item = ismrmrd.Acquisition.from_array(readout.data, center_sample=readout.center_sample,
                                              sample_time_us=readout.sample_time_us,
                                              idx=ismrmrd.EncodingCounters(
                                                  kspace_encode_step_1=readout.kspace_encode_step_1))
        item.flags = flag_bits
        acquisitions.append(item)
    SyntheticScan(xml, acquisitions, {}, np.fft.ifftshift(acquired), None).write_ismrmrd(path)
