"""One MRD acquisition as the raw-data path takes it (:class:`Readout`), independent of the library that read it, and
the adapter from ``ismrmrd.Acquisition`` (:func:`readout_from_ismrmrd`; MRD v2's is in :mod:`compressor.data.mrd_v2`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import ismrmrd
import numpy as np

from compressor.errors import InputError


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
        """Whether ``ismrmrd.ACQ_*`` ``flag`` (a 1-based bit number) is set."""
        return bool(int(self.flags) & (1 << (flag - 1)))


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
