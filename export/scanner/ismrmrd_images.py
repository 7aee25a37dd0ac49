r"""Reconstructions as ISMRMRD images whose headers come from the raw acquisitions, so a viewer places them right.

One ``ismrmrd.Image`` per assembled slice:

* **data**: the magnitude ``|x|`` as float32, ``image_type = IMTYPE_MAGNITUDE``. The 2-channel models give a complex
  image whose phase is the virtual coil's (arbitrary up to the coil compression), and viewers and PACS show
  magnitude; python-ismrmrd-server's examples also send magnitude images. float32 keeps the reconstruction's units
  (the input's) without the rescaling and clipping an integer type would need; the complex image stays in the
  project's HDF5.
* **layout**: ISMRMRD image data are ``(channels, z, y, x)`` with ``x`` the readout (``matrix_size = (x, y, z)``,
  ``read_dir`` along ``x``, ``phase_dir`` along ``y``); the tool's image is ``(H, W)`` = (readout, phase-encode), so
  ``data[0, 0] = image.T`` (``(W, H)``) and ``matrix_size = (H, W, 1)``.
* **header**, carried over from the readout nearest the slice's k-space centre line
  (:attr:`~compressor.data.mrd_raw.AssembledSlice.info`): ``measurement_uid``, ``position``, ``read_dir``,
  ``phase_dir``, ``slice_dir``, ``patient_table_position``, ``acquisition_time_stamp``, ``physiology_time_stamp``;
  from the slice's key: ``slice``, ``contrast``, ``phase``, ``repetition``, ``set``; ``average`` is 0 (the averages
  were combined into this image). ``field_of_view`` is that of the output grid
  (:attr:`~compressor.data.mrd_header.EncodingGeometry.image_fov_mm`: readout from the recon space, since the
  oversampling was removed, phase-encode from the encoded space, kept whole, slice thickness from the recon space);
  ``channels`` 1; ``image_series_index`` and ``image_index`` (1-based, running within the series) as given.
"""

from __future__ import annotations

from pathlib import Path

import ismrmrd
import numpy as np

from compressor.data.ismrmrd_file import RawScan
from compressor.data.mrd_header import EncodingGeometry
from compressor.data.mrd_raw import AssembledSlice
from compressor.io import atomic_path

IMAGE_GROUP = "images_0"  # the image series name ismrmrd.Dataset and the ISMRMRD tools use


def image_header(assembled: AssembledSlice, geometry: EncodingGeometry, series_index: int,
                 image_index: int) -> ismrmrd.ImageHeader:
    """The ISMRMRD header of the magnitude image of ``assembled`` (module docstring for every field)."""
    info, key = assembled.info, assembled.key
    height, width = geometry.image_shape
    header = ismrmrd.ImageHeader()
    header.version = 1
    header.data_type = ismrmrd.DATATYPE_FLOAT
    header.image_type = ismrmrd.IMTYPE_MAGNITUDE
    header.matrix_size[:] = (height, width, 1)
    header.field_of_view[:] = geometry.image_fov_mm
    header.channels = 1
    header.measurement_uid = info.measurement_uid
    header.position[:] = info.position
    header.read_dir[:] = info.read_dir
    header.phase_dir[:] = info.phase_dir
    header.slice_dir[:] = info.slice_dir
    header.patient_table_position[:] = info.patient_table_position
    header.acquisition_time_stamp = info.acquisition_time_stamp
    header.physiology_time_stamp[:] = info.physiology_time_stamp
    header.slice, header.contrast, header.phase = key.slice, key.contrast, key.phase
    header.repetition, header.set, header.average = key.repetition, key.set, 0
    header.image_series_index = series_index
    header.image_index = image_index
    return header


def ismrmrd_image(reconstruction: np.ndarray, header: ismrmrd.ImageHeader) -> ismrmrd.Image:
    """The magnitude of ``reconstruction`` ``(H, W)`` (readout, phase-encode; real or complex) as an ISMRMRD image
    ``(1, 1, W, H)`` float32 (``(channels, z, y, x)``, ``x`` the readout) with ``header``."""
    height, width = reconstruction.shape
    if tuple(header.matrix_size) != (height, width, 1):
        raise ValueError(f"header matrix_size {tuple(header.matrix_size)} does not fit an image of {height}x{width}")
    data = np.abs(reconstruction).astype(np.float32).T[None, None]
    return ismrmrd.Image(head=header, data=np.ascontiguousarray(data))


def slice_image(reconstruction: np.ndarray, assembled: AssembledSlice, geometry: EncodingGeometry, series_index: int,
                image_index: int) -> ismrmrd.Image:
    """The ISMRMRD magnitude image of one slice's reconstruction ``(H, W)`` (readout, phase-encode) with the header of
    :func:`image_header`: what the file path (``--ismrmrd-out``) and the streaming server send alike."""
    return ismrmrd_image(reconstruction, image_header(assembled, geometry, series_index, image_index))


def scan_images(scan: RawScan, reconstruction: np.ndarray, series_index: int = 1) -> list[ismrmrd.Image]:
    """The ISMRMRD magnitude images of a raw scan's reconstruction ``(S, H, W)`` (one per assembled slice, in the
    scan's order), ``image_index`` 1, 2, ... in slice order."""
    return [slice_image(image, assembled, scan.geometry, series_index, index)
            for index, (assembled, image) in enumerate(zip(scan.slices, reconstruction, strict=True), 1)]


def write_ismrmrd_images(path: Path, images: list[ismrmrd.Image], xml: str | bytes | None = None,
                         group: str = "dataset") -> Path:
    """Write ``images`` as ``/<group>/images_0`` of an ISMRMRD HDF5 file (the layout of
    ``ismrmrd.Dataset.append_image``), with the scan's XML header if given, atomically."""
    with atomic_path(path) as temporary:
        dataset = ismrmrd.Dataset(str(temporary), group, mode="w")
        try:
            if xml is not None:
                dataset.write_xml_header(xml if isinstance(xml, bytes) else xml.encode())
            for image in images:
                dataset.append_image(IMAGE_GROUP, image)
        finally:
            dataset.close()
    return Path(path)
