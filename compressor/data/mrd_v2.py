"""MRD v2 (the ``mrd-python`` package, yardl-generated) in the MRD raw-data path of :mod:`compressor.data.mrd_raw`.

MRD v2 carries the same scan as ISMRMRD v1 in typed records: ``mrd.Header`` (the XML header's fields as objects),
``mrd.Acquisition`` (``head`` with optional counters, ``data`` ``(coils, samples)`` complex64). Two adapters put it
on the v1 path, so that assembly and every check stay in one place:

* :func:`readout_from_mrd`: an ``mrd.Acquisition`` -> the library-neutral :class:`~compressor.data.mrd_readout.Readout`
  (MRD v2's ``AcquisitionFlags`` are ISMRMRD v1's flag bits: bit ``n - 1`` is ``ismrmrd.ACQ_*`` ``n``, so the flags
  pass unchanged; an absent optional counter or field is 0, as in a v1 header);
* :func:`ismrmrd_header` / :func:`encoding_geometry`: the encodings (and integer user parameters) of an
  ``mrd.Header`` -> the ISMRMRD v1 header objects (``ismrmrd.xsd``) the geometry is read from, then
  :meth:`~compressor.data.mrd_header.EncodingGeometry.from_header` with its checks (one encoding, Cartesian, 2-D).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import ismrmrd.xsd as xsd
import mrd
import numpy as np

from compressor.data.mrd_header import EncodingGeometry
from compressor.data.mrd_readout import AcquisitionInfo, Readout, SliceKey, float_triple
from compressor.errors import InputError

LIMIT_NAMES = tuple(limit.name for limit in dataclasses.fields(xsd.encodingLimitsType))
"""The encoding limits of an ISMRMRD header; MRD v2's ``EncodingLimitsType`` has the same names."""


def _count(value: int | None) -> int:
    """An optional MRD v2 counter or field as ISMRMRD v1 has it (absent: 0)."""
    return 0 if value is None else int(value)


def readout_from_mrd(acquisition: mrd.Acquisition, source: str | Path = "acquisition") -> Readout:
    """The :class:`Readout` of an MRD v2 acquisition; its data must be 2-D ``(coils, samples)`` (:class:`InputError`
    naming ``source`` otherwise). Physiology time stamps are padded or cut to ISMRMRD v1's three."""
    head = acquisition.head
    data = np.asarray(acquisition.data)
    if data.ndim != 2 or data.size == 0:
        raise InputError(f"acquisition {_count(head.scan_counter)} has data of shape {data.shape}; expected "
                         "(coils, samples)", source)
    idx = head.idx
    stamps = [int(value) for value in head.physiology_time_stamp[:3]]
    info = AcquisitionInfo(
        position=float_triple(head.position), read_dir=float_triple(head.read_dir),
        phase_dir=float_triple(head.phase_dir), slice_dir=float_triple(head.slice_dir),
        patient_table_position=float_triple(head.patient_table_position),
        measurement_uid=int(head.measurement_uid), acquisition_time_stamp=_count(head.acquisition_time_stamp),
        physiology_time_stamp=tuple(stamps + [0] * (3 - len(stamps))))
    return Readout(
        data=data.astype(np.complex64), flags=int(head.flags),
        kspace_encode_step_1=_count(idx.kspace_encode_step_1),
        key=SliceKey(_count(idx.slice), _count(idx.contrast), _count(idx.phase), _count(idx.repetition),
                     _count(idx.set)),
        average=_count(idx.average), center_sample=_count(head.center_sample),
        discard_pre=_count(head.discard_pre), discard_post=_count(head.discard_post),
        sample_time_us=float(head.sample_time_us or 0.0), info=info)


def _space(space: mrd.EncodingSpaceType) -> xsd.encodingSpaceType:
    matrix, fov = space.matrix_size, space.field_of_view_mm
    return xsd.encodingSpaceType(matrixSize=xsd.matrixSizeType(x=matrix.x, y=matrix.y, z=matrix.z),
                                 fieldOfView_mm=xsd.fieldOfViewMm(x=fov.x, y=fov.y, z=fov.z))


def _limit(limit: mrd.LimitType | None) -> xsd.limitType | None:
    return None if limit is None else xsd.limitType(minimum=limit.minimum, maximum=limit.maximum, center=limit.center)


def _encoding(encoding: mrd.EncodingType) -> xsd.encodingType:
    limits = xsd.encodingLimitsType(**{name: _limit(getattr(encoding.encoding_limits, name)) for name in LIMIT_NAMES})
    trajectory_name = getattr(encoding.trajectory, "name", None)
    trajectory = xsd.trajectoryType[trajectory_name] if trajectory_name in xsd.trajectoryType.__members__ \
        else xsd.trajectoryType.OTHER
    parallel = None
    if encoding.parallel_imaging is not None:
        factor = encoding.parallel_imaging.acceleration_factor
        parallel = xsd.parallelImagingType(accelerationFactor=xsd.accelerationFactorType(
            kspace_encoding_step_1=factor.kspace_encoding_step_1, kspace_encoding_step_2=factor.kspace_encoding_step_2))
    return xsd.encodingType(encodedSpace=_space(encoding.encoded_space), reconSpace=_space(encoding.recon_space),
                            encodingLimits=limits, trajectory=trajectory, parallelImaging=parallel)


def _user_parameters(header: mrd.Header) -> xsd.userParametersType | None:
    """The integer user parameters (``userParameterLong``, e.g. ``BitsStored``); ``None`` without any."""
    longs = header.user_parameters.user_parameter_long if header.user_parameters is not None else None
    if not longs:
        return None
    return xsd.userParametersType(userParameterLong=[xsd.userParameterLongType(name=item.name, value=item.value)
                                                     for item in longs])


def ismrmrd_header(header: mrd.Header) -> xsd.ismrmrdHeader:
    """The ISMRMRD v1 header of an MRD v2 header's encodings and integer user parameters (the parts the raw-data path
    and the image conventions read; the rest of the header is not needed and is left out)."""
    return xsd.ismrmrdHeader(
        experimentalConditions=xsd.experimentalConditionsType(
            H1resonanceFrequency_Hz=header.experimental_conditions.h1resonance_frequency_hz),
        encoding=[_encoding(encoding) for encoding in header.encoding], userParameters=_user_parameters(header))


def encoding_geometry(header: mrd.Header, source: str | Path) -> EncodingGeometry:
    """The :class:`EncodingGeometry` of an MRD v2 header, with every check of
    :meth:`~compressor.data.mrd_header.EncodingGeometry.from_header` (:class:`InputError` naming ``source``)."""
    return EncodingGeometry.from_header(ismrmrd_header(header), source)
