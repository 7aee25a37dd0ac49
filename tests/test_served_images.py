"""Served-image conventions (:mod:`compressor.export.scanner.image_formats`), the MetaContainer every image carries
(:mod:`compressor.export.scanner.image_meta`), and the served images converted to DICOM the way a site converts them
(MetaContainer parsed by ``ismrmrd.Meta``, pixels, rescale, window and orientation into a pydicom dataset, written
and read back), on the tiny model and scans of ``tests/test_mrd_server.py``."""

from __future__ import annotations

import dataclasses

import ismrmrd
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from compressor.cli.scanner_choices import IMAGE_FORMATS as IMAGE_FORMAT_CHOICES
from compressor.errors import InputError
from compressor.export.exported_file import Precision, QualityRecord
from compressor.export.runtimes.session import open_exported
from compressor.export.scanner.image_formats import IMAGE_FORMATS, bits_stored, image_format
from compressor.export.scanner.image_meta import dicom_text, model_labels, quality_text
from compressor.export.scanner.mrd_client import stream_scan
from tests.synthetic_scans import synthetic_scan
from tests.test_mrd_server import TIMEOUT, acquired_lines, coil_images, serving, tiny_export

OBLIQUE_READ = (0.8, 0.6, 0.0)
OBLIQUE_PHASE = (-0.6, 0.8, 0.0)


def ramp(height: int = 5, width: int = 4, complex_values: bool = False) -> np.ndarray:
    values = np.arange(height * width, dtype=np.float32).reshape(height, width) / 7.0
    return (values * np.exp(1j * values)).astype(np.complex64) if complex_values else values


# ------------------------------------------------------------------------------------------------ conventions
@pytest.mark.parametrize(("bits", "dtype", "data_type"), [(12, np.int16, ismrmrd.DATATYPE_SHORT),
                                                          (8, np.int16, ismrmrd.DATATYPE_SHORT),
                                                          (15, np.int16, ismrmrd.DATATYPE_SHORT),
                                                          (16, np.uint16, ismrmrd.DATATYPE_USHORT)])
def test_16_bit_magnitude_fills_its_bits_without_clipping_and_the_slope_gives_the_units_back(bits, dtype, data_type):
    image = ramp(complex_values=True)
    pixels = image_format("magnitude16").pixels(image, bits)
    top = 2 ** bits - 1
    assert pixels.data.dtype == dtype and pixels.data_type == data_type and pixels.data.shape == (1, 1, 4, 5)
    assert pixels.data.flags.c_contiguous and pixels.image_type == ismrmrd.IMTYPE_MAGNITUDE
    assert pixels.data.max() == top and pixels.data.min() >= 0  # the maximum at 2^bits - 1, nothing clipped
    magnitude = np.abs(image).T
    np.testing.assert_allclose(pixels.data[0, 0] * pixels.rescale_slope, magnitude, rtol=0,
                               atol=pixels.rescale_slope / 2 * (1 + 1e-6))
    assert pixels.rescale_slope == pytest.approx(magnitude.max() / top)
    assert pixels.window == pytest.approx(((top + 1) / 2 * pixels.rescale_slope, (top + 1) * pixels.rescale_slope))


def test_an_all_zero_image_has_slope_1():
    pixels = image_format("magnitude16").pixels(np.zeros((3, 2), np.float32), 12)
    assert not pixels.data.any() and pixels.rescale_slope == 1.0


def test_a_reconstruction_holding_nan_is_not_turned_into_pixels():
    image = ramp()
    image[1, 1] = np.nan
    for name in IMAGE_FORMATS.names():
        with pytest.raises(InputError, match="NaN or Inf"):
            image_format(name).pixels(image, 12)


def test_float32_and_complex_keep_the_reconstruction():
    image = ramp(complex_values=True)
    as_float = image_format("float32").pixels(image, 12)
    assert as_float.data.dtype == np.float32 and as_float.data_type == ismrmrd.DATATYPE_FLOAT
    np.testing.assert_array_equal(as_float.data[0, 0], np.abs(image).T)
    as_complex = image_format("complex").pixels(image, 12)
    assert as_complex.data.dtype == np.complex64 and as_complex.image_type == ismrmrd.IMTYPE_COMPLEX
    np.testing.assert_array_equal(as_complex.data[0, 0], image.T)
    assert as_float.rescale_slope == as_complex.rescale_slope == 1.0


def test_the_cli_choices_are_the_registry():
    assert list(IMAGE_FORMAT_CHOICES.choices) == IMAGE_FORMATS.names() == ["complex", "float32", "magnitude16"]
    with pytest.raises(InputError, match="unknown image format 'png'; valid names: complex, float32, magnitude16"):
        image_format("png")


def test_bits_stored_comes_from_the_header_and_is_checked():
    assert bits_stored(None, "scan") == 12
    for bits in (8, 16):
        xml = synthetic_scan(coil_images(1, 1), acquired_lines=acquired_lines(), bits_stored=bits).xml
        assert bits_stored(ismrmrd.xsd.CreateFromDocument(xml), "scan") == bits
    xml = synthetic_scan(coil_images(1, 1), acquired_lines=acquired_lines(), bits_stored=20).xml
    with pytest.raises(InputError, match="userParameterLong BitsStored is 20"):
        bits_stored(ismrmrd.xsd.CreateFromDocument(xml), "scan")


# ------------------------------------------------------------------------------------------------ texts
def test_dicom_text_has_no_slashes_and_at_most_64_characters():
    assert dicom_text("sft_kd/at/d3c5@4x") == "sft_kd-at-d3c5@4x"
    assert dicom_text("a\\b//c\u0394d\ne") == "a-b-c-d-e"
    assert len(dicom_text("x" * 100)) == 64


def test_image_comment_names_model_precision_quality_and_reason(tmp_path):
    metadata = open_exported(tiny_export(tmp_path / "m.onnx", 2), "cpu").metadata
    assert model_labels("sft_kd/at/d3c5@4x", metadata, "named by parameters.customconfig").comment == (
        "sft_kd-at-d3c5@4x", "fp32", "fp32 reference", "named by parameters.customconfig")
    quality = QualityRecord(-0.123, -0.001, 35.0, 8, "fp32 export", "CPU", "validation")
    int8 = dataclasses.replace(metadata, precision=Precision.INT8, quality=quality)
    assert quality_text(int8) == "dPSNR -0.12 dB vs fp32"
    assert model_labels("m.int8", int8, "why").comment[:3] == ("m.int8", "int8", "dPSNR -0.12 dB vs fp32")


# ------------------------------------------------------------------------------------------------ as a site does
def to_dicom(image: ismrmrd.Image, protocol: str) -> pydicom.Dataset:
    """One served image as a DICOM MR image, the way python-ismrmrd-server's mrd2dicom.py builds it: pixels as
    stored (unsigned, 16 bits), rows = y (phase-encode), columns = x (readout), every MetaContainer value parsed by
    ``ismrmrd.Meta``."""
    meta = ismrmrd.Meta.deserialize(image.attribute_string)
    dataset = pydicom.Dataset()
    dataset.file_meta = pydicom.dataset.FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = pydicom.uid.MRImageStorage
    dataset.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    pixels = np.squeeze(image.data)
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 16, 15
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation, dataset.PixelRepresentation = 1, "MONOCHROME2", 0
    dataset.PixelData = pixels.tobytes()
    dataset.SeriesNumber, dataset.InstanceNumber = image.image_series_index, image.image_index
    dataset.SeriesDescription = protocol + meta["SeriesDescriptionAdditional"]  # mrd2dicom.py's name for it
    dataset.ImageComments = "_".join(meta["ImageComment"])  # the DICOM keyword (mrd2dicom.py sets "ImageComment")
    dataset.ImageOrientationPatient = [float(value) for value in (*meta["ImageRowDir"], *meta["ImageColumnDir"])]
    dataset.RescaleSlope, dataset.RescaleIntercept = meta["RescaleSlope"], meta["RescaleIntercept"]
    dataset.WindowCenter, dataset.WindowWidth = meta["WindowCenter"], meta["WindowWidth"]
    return dataset


def oblique(acquisition: ismrmrd.Acquisition) -> ismrmrd.Acquisition:
    acquisition.read_dir[:], acquisition.phase_dir[:] = OBLIQUE_READ, OBLIQUE_PHASE
    return acquisition


def test_served_images_become_dicom_a_viewer_shows(tmp_path):
    """The scan in "SNR units" (x 1000, as prewhitened data are): DICOM's linear window needs a width >= 1 in the
    rescaled units it is applied to."""
    model_path = tiny_export(tmp_path / "sft_kd_at_d2c2@2x.onnx", 2)
    scan = synthetic_scan(coil_images(seed=7) * 1000, acquired_lines=acquired_lines())
    with serving(model_path) as server:
        reply = stream_scan(server.address, scan.xml, [oblique(a) for a in scan.acquisitions], timeout=TIMEOUT)
    assert len(reply.images) == 3 and reply.texts == []
    for image in reply.images:
        meta = ismrmrd.Meta.deserialize(image.attribute_string)
        assert meta["DataRole"] == "Image" and meta["Keep_image_geometry"] == "1"
        assert meta["SequenceDescriptionAdditional"] == meta["SeriesDescriptionAdditional"] == "_SFTKD"
        assert meta["ImageProcessingHistory"] == ["FIRE", "PYTHON", "SFTKD"]
        assert meta["ImageRowDir"] == [f"{value:.18f}" for value in np.float32(OBLIQUE_READ)]
        path = tmp_path / f"{image.image_series_index:02d}_{to_dicom(image, 'T2_tse').SeriesDescription}.dcm"
        to_dicom(image, "T2_tse").save_as(path, enforce_file_format=True)
        read = pydicom.dcmread(path)
        stored = read.pixel_array
        assert stored.dtype == np.uint16 and stored.max() == 4095  # 12 bits stored: the header has no BitsStored
        np.testing.assert_array_equal(stored, image.data[0, 0])
        units = apply_modality_lut(stored, read)  # pixel x RescaleSlope: the reconstruction's own units
        assert float(units.max()) == pytest.approx(4095 * float(meta["RescaleSlope"]))
        assert float(meta["WindowWidth"]) >= 1
        shown = apply_voi_lut(units, read)  # the window spans the stored range: the image's whole grey scale
        display = 65535 * float(meta["RescaleSlope"])  # pydicom's output range: 16 bits stored, rescaled
        assert float(shown[stored == stored.min()].max()) <= display * (stored.min() + 1) / 4096
        assert float(shown.max()) == pytest.approx(display, rel=1e-3)
        np.testing.assert_allclose(read.ImageOrientationPatient, [*OBLIQUE_READ, *OBLIQUE_PHASE], atol=1e-7)
        assert read.SeriesDescription == "T2_tse_SFTKD" and "/" not in path.name
        assert read.ImageComments.startswith("sft_kd_at_d2c2@2x_fp32_fp32 reference_")
