r"""Reconstructions as ISMRMRD images whose headers come from the raw acquisitions, so a viewer places them right: the
one builder of every image the scanner side writes (the server sends, ``--ismrmrd-out`` writes, the MRD v2 filter
converts).

One ``ismrmrd.Image`` per assembled slice (:func:`slice_image`):

* **data**: by the served-image convention of :class:`ImageStyle` (:mod:`compressor.export.scanner.image_formats`:
  16-bit magnitude by default, float32 or complex for research), ``(1, 1, W, H)`` = ``(channels, z, y, x)`` with
  ``x`` the readout (``matrix_size = (H, W, 1)``, ``read_dir`` along ``x``, ``phase_dir`` along ``y``);
* **MetaContainer** (``attribute_string``): :mod:`compressor.export.scanner.image_meta`;
* **header**, carried over from the readout nearest the slice's k-space centre line
  (:attr:`~compressor.data.mrd_raw.AssembledSlice.info`): ``measurement_uid``, ``position``, ``read_dir``,
  ``phase_dir``, ``slice_dir``, ``patient_table_position``, ``acquisition_time_stamp``, ``physiology_time_stamp``;
  from the slice's key: ``slice``, ``contrast``, ``phase``, ``repetition``, ``set``; ``average`` is 0 (the averages
  were combined into this image). ``field_of_view`` is that of the output grid
  (:attr:`~compressor.data.mrd_header.EncodingGeometry.image_fov_mm`: readout from the recon space, since the
  oversampling was removed, phase-encode from the encoded space, kept whole, slice thickness from the recon space);
  ``channels`` 1; ``data_type`` and ``image_type`` the convention's;
* **series and index** (:class:`SeriesNumbering`): each contrast is its own series, ``image_series_index`` = 1 +
  contrast; with a comparison series (the zero-filled image, :mod:`compressor.export.scanner.mrd_connection`) the
  network's image of contrast ``c`` is series ``1 + 2c`` and its zero-filled image ``2 + 2c`` (one contrast: series
  1 and 2). ``image_index`` runs 1, 2, ... within each series in the order the images are made (slices,
  phases, repetitions, sets as they complete).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ismrmrd
import numpy as np

from compressor.data.ismrmrd_file import RawScan
from compressor.data.mrd_header import EncodingGeometry
from compressor.data.mrd_raw import AssembledSlice
from compressor.data.mrd_readout import SliceKey
from compressor.export.scanner.image_formats import ImageFormat
from compressor.export.scanner.image_meta import ImageLabels, meta_attributes
from compressor.io import atomic_path

IMAGE_GROUP = "images_0"  # the image series name ismrmrd.Dataset and the ISMRMRD tools use


@dataclass(frozen=True)
class ImageStyle:
    """How one series' images are written.

    Attributes:
        image_format: the served-image convention.
        bits_stored: the scan header's ``BitsStored`` (integer conventions scale to ``2^bits_stored - 1``).
        labels: the MetaContainer texts (model, precision, ΔPSNR, why it ran; or a comparison series').
    """

    image_format: ImageFormat
    bits_stored: int
    labels: ImageLabels


class SeriesNumbering:
    """``(image_series_index, image_index)`` of each image made for one scan (module docstring), in order.

    Args:
        comparison: whether each network image has a zero-filled partner in its own series.
    """

    def __init__(self, comparison: bool = False):
        self.comparison = comparison
        self._counts: dict[int, int] = {}

    def series(self, key: SliceKey, zero_filled: bool = False) -> int:
        """The series of slice ``key``'s network image (or of its zero-filled image)."""
        if not self.comparison:
            return 1 + key.contrast
        return 1 + 2 * key.contrast + int(zero_filled)

    def next(self, key: SliceKey, zero_filled: bool = False) -> tuple[int, int]:
        """The series and the next ``image_index`` in it (1-based) for slice ``key``'s image."""
        series = self.series(key, zero_filled)
        self._counts[series] = self._counts.get(series, 0) + 1
        return series, self._counts[series]


def image_header(assembled: AssembledSlice, geometry: EncodingGeometry, series_index: int,
                 image_index: int) -> ismrmrd.ImageHeader:
    """The ISMRMRD header of the image of ``assembled`` (module docstring for every field; ``data_type`` and
    ``image_type`` are set with the pixels, :func:`ismrmrd_image`)."""
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


def ismrmrd_image(reconstruction: np.ndarray, header: ismrmrd.ImageHeader, style: ImageStyle) -> ismrmrd.Image:
    """The image of ``reconstruction`` ``(H, W)`` (readout, phase-encode; real or complex, finite) in ``style``, with
    ``header`` (its ``data_type``, ``image_type`` and ``attribute_string`` set here)."""
    height, width = reconstruction.shape
    if tuple(header.matrix_size) != (height, width, 1):
        raise ValueError(f"header matrix_size {tuple(header.matrix_size)} does not fit an image of {height}x{width}")
    pixels = style.image_format.pixels(reconstruction, style.bits_stored)
    header.image_type = pixels.image_type
    image = ismrmrd.Image(head=header, data=pixels.data,
                          meta=ismrmrd.Meta(meta_attributes(pixels, header, style.labels)))
    return image


def slice_image(reconstruction: np.ndarray, assembled: AssembledSlice, geometry: EncodingGeometry, series_index: int,
                image_index: int, style: ImageStyle) -> ismrmrd.Image:
    """The ISMRMRD image of one slice's reconstruction ``(H, W)`` (readout, phase-encode) with the header of
    :func:`image_header`: what the file path (``--ismrmrd-out``) and the streaming server send alike."""
    return ismrmrd_image(reconstruction, image_header(assembled, geometry, series_index, image_index), style)


def scan_images(scan: RawScan, reconstruction: np.ndarray, style: ImageStyle) -> list[ismrmrd.Image]:
    """The ISMRMRD images of a raw scan's reconstruction ``(S, H, W)`` (one per assembled slice, in the scan's order,
    numbered by :class:`SeriesNumbering`, as the server numbers a stream of the same scan)."""
    numbering = SeriesNumbering()
    return [slice_image(image, assembled, scan.geometry, *numbering.next(assembled.key), style)
            for assembled, image in zip(scan.slices, reconstruction, strict=True)]


def write_ismrmrd_images(path: Path, images: list[ismrmrd.Image], xml: str | bytes | None = None,
                         group: str = "dataset") -> Path:
    """Write ``images`` as ``/<group>/images_0`` of an ISMRMRD HDF5 file (the layout of
    ``ismrmrd.Dataset.append_image``, MetaContainers in ``attributes``), with the scan's XML header if given,
    atomically."""
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
