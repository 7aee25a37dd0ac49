"""ISMRMRD (MRD v1) HDF5 files: ``/<group>/xml`` header and ``/<group>/data`` acquisitions, read and assembled
through the streaming path (:class:`~compressor.data.mrd_raw.SliceAssembler`) into a :class:`RawScan`."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import ismrmrd
import numpy as np

from compressor.data.mrd_header import EncodingGeometry
from compressor.data.mrd_raw import AssembledSlice, SliceAssembler, skipped_summary
from compressor.data.mrd_readout import readout_from_ismrmrd
from compressor.errors import InputError

READ_CHUNK = 4096  # acquisitions read from a file at a time
HEAD_BYTES = ctypes.sizeof(ismrmrd.AcquisitionHeader)


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


def read_ismrmrd_file(path: Path, group: str = "dataset",
                      accept: Callable[[EncodingGeometry], None] | None = None) -> RawScan:
    """Read an ISMRMRD HDF5 file (``/<group>/xml`` header, ``/<group>/data`` acquisitions) and assemble its slices
    with :class:`SliceAssembler`; every problem is an :class:`InputError` naming ``path``. ``accept`` is called with
    the header's geometry before any acquisition is read (it raises to refuse the scan, e.g. another image grid than
    a model's, before its slices are allocated)."""
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
        if accept is not None:
            accept(geometry)
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
