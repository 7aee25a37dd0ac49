r"""The ISMRMRD MetaContainer every served image carries (``attribute_string``), as FIRE/OpenRecon and
python-ismrmrd-server's ``mrd2dicom.py`` read it.

:func:`meta_attributes` gives, in this order:

* ``DataRole`` ``Image``; ``ImageProcessingHistory`` (a list, e.g. ``FIRE``, ``PYTHON``, ``SFTKD``);
* ``WindowCenter``, ``WindowWidth``: the image's window (:mod:`~compressor.export.scanner.image_formats`: the whole
  range, in rescaled units); ``RescaleSlope`` and ``RescaleIntercept`` (``0``): ``pixel x slope`` is the
  reconstruction in its own units;
* ``ImageRowDir``, ``ImageColumnDir``: the header's ``read_dir`` and ``phase_dir``, each component with 18 decimals
  (python-ismrmrd-server's format). A row of the image runs along ``x`` = the readout, a column along ``y`` = the
  phase-encode direction, so DICOM's ImageOrientationPatient is ``ImageRowDir + ImageColumnDir``;
* ``SequenceDescriptionAdditional``: appended to the series description by FIRE; ``SeriesDescriptionAdditional``, the
  same text under the name python-ismrmrd-server's ``mrd2dicom.py`` reads (it appends it to the protocol name and
  builds file names from the result), so that the network's and the comparison series are told apart there too;
  ``Keep_image_geometry`` ``1`` (the scanner keeps the image's geometry);
* ``ImageComment``: a list of at least two strings (``mrd2dicom.py`` joins a list with ``_``; one string would be
  split into characters): the model, its precision, its export's validated ΔPSNR and why it was chosen
  (:func:`model_labels`), or what a comparison image is (:func:`zero_filled_labels`).

Numbers are written with at most 9 significant digits, so that each fits DICOM's 16-character decimal strings.
Every text value is DICOM-safe (:func:`dicom_text`): printable ASCII without ``/`` or ``\`` (each run of other
characters becomes ``-``), at most 64 characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import ismrmrd

from compressor.export.exported_file import ExportMetadata, Precision
from compressor.export.scanner.image_formats import ImagePixels

DICOM_TEXT_LENGTH = 64
UNSAFE_TEXT = re.compile(r"[^\x20-\x7e]+|[/\\]+")
DATA_ROLE = "Image"
HISTORY = ("FIRE", "PYTHON", "SFTKD")
ZERO_FILLED_HISTORY = ("FIRE", "PYTHON", "ZEROFILLED")
SERIES_SUFFIX = "_SFTKD"
ZERO_FILLED_SERIES_SUFFIX = "_ZEROFILLED"
DIRECTION_FORMAT = "{:.18f}"
COMMAND_LINE_REASON = "named on the command line"  # the reason of a model given to compress reconstruct


def dicom_text(text: str) -> str:
    """``text`` made DICOM-safe: each run of characters that are not printable ASCII, or are ``/`` or ``\\``,
    becomes one ``-``; cut to :data:`DICOM_TEXT_LENGTH` characters."""
    return UNSAFE_TEXT.sub("-", text)[:DICOM_TEXT_LENGTH]


def number_text(value: float) -> str:
    """A number as at most 9 significant digits (a DICOM decimal string has at most 16 characters)."""
    return f"{value:.9g}"


@dataclass(frozen=True)
class ImageLabels:
    """The texts of one series' images (each DICOM-safe: build them with :func:`model_labels` or
    :func:`zero_filled_labels`).

    Attributes:
        comment: ``ImageComment``, at least two strings.
        series_suffix: ``SequenceDescriptionAdditional``.
        history: ``ImageProcessingHistory``.
    """

    comment: tuple[str, ...]
    series_suffix: str = SERIES_SUFFIX
    history: tuple[str, ...] = HISTORY


def quality_text(metadata: ExportMetadata) -> str:
    """The export's validated ΔPSNR against its fp32 export (ASCII ``dPSNR``), or that it is the fp32 reference."""
    if metadata.quality is not None:
        return f"dPSNR {metadata.quality.delta_psnr_db:+.2f} dB vs fp32"
    if metadata.precision == Precision.FP32:
        return "fp32 reference"
    return "dPSNR not recorded"


def model_labels(name: str, metadata: ExportMetadata, reason: str) -> ImageLabels:
    """The labels of a model's images: ``ImageComment`` = model ``name`` (its served name or file stem), its
    precision, its validated ΔPSNR and ``reason`` (why it ran)."""
    comment = (name, metadata.precision.value, quality_text(metadata), reason)
    return ImageLabels(tuple(dicom_text(text) for text in comment))


def zero_filled_labels(name: str) -> ImageLabels:
    """The labels of the zero-filled comparison series of model ``name``'s input."""
    comment = ("zero-filled", f"input of {name}")
    return ImageLabels(tuple(dicom_text(text) for text in comment), ZERO_FILLED_SERIES_SUFFIX, ZERO_FILLED_HISTORY)


def meta_attributes(pixels: ImagePixels, header: ismrmrd.ImageHeader,
                    labels: ImageLabels) -> dict[str, str | list[str]]:
    """The MetaContainer attributes of one image (module docstring), values as ISMRMRD writes them (strings, or
    lists of strings)."""
    centre, width = pixels.window
    return {
        "DataRole": DATA_ROLE,
        "ImageProcessingHistory": list(labels.history),
        "WindowCenter": number_text(centre),
        "WindowWidth": number_text(width),
        "RescaleSlope": number_text(pixels.rescale_slope),
        "RescaleIntercept": "0",
        "ImageRowDir": [DIRECTION_FORMAT.format(value) for value in header.read_dir],
        "ImageColumnDir": [DIRECTION_FORMAT.format(value) for value in header.phase_dir],
        "SequenceDescriptionAdditional": labels.series_suffix,
        "SeriesDescriptionAdditional": labels.series_suffix,
        "Keep_image_geometry": "1",
        "ImageComment": list(labels.comment),
    }


def meta_xml(attributes: dict[str, str | list[str]]) -> str:
    """The MetaContainer XML text of ``attributes`` (``ismrmrd.Meta``'s serialisation)."""
    return ismrmrd.Meta(attributes).serialize()
