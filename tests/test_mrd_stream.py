"""MRD v2 (``mrd-python``) streams: the adapters onto the ISMRMRD raw-data path (:mod:`compressor.data.mrd_v2`) and the
stdin-to-stdout filter ``compress reconstruct MODEL.onnx - --source mrd``, against ``--source ismrmrd`` on the same
scan (the tiny 2-channel model and scans of ``tests/test_mrd_server.py``)."""

from __future__ import annotations

import dataclasses
import io

import ismrmrd
import mrd
import numpy as np
import pytest
from click.testing import CliRunner

from compressor.cli.reconstruct_command import reconstruct_command
from compressor.data.mrd_header import EncodingGeometry
from compressor.data.mrd_readout import readout_from_ismrmrd
from compressor.data.mrd_v2 import encoding_geometry, readout_from_mrd
from tests.synthetic_scans import synthetic_scan
from tests.test_mrd_server import (
    INTEGER_TOLERANCE,
    SIZE,
    TOLERANCE,
    acquired_lines,
    coil_images,
    offline_images,
    tiny_export,
)

FLAG_PAIRS = [
    ("ACQ_FIRST_IN_ENCODE_STEP1", "FIRST_IN_ENCODE_STEP_1"), ("ACQ_LAST_IN_SLICE", "LAST_IN_SLICE"),
    ("ACQ_LAST_IN_REPETITION", "LAST_IN_REPETITION"), ("ACQ_IS_NOISE_MEASUREMENT", "IS_NOISE_MEASUREMENT"),
    ("ACQ_IS_PARALLEL_CALIBRATION", "IS_PARALLEL_CALIBRATION"), ("ACQ_IS_REVERSE", "IS_REVERSE"),
    ("ACQ_IS_PHASECORR_DATA", "IS_PHASECORR_DATA"), ("ACQ_LAST_IN_MEASUREMENT", "LAST_IN_MEASUREMENT"),
    ("ACQ_IS_PHASE_STABILIZATION", "IS_PHASE_STABILIZATION"),
]


def mrd_header(xml: str) -> mrd.Header:
    """The MRD v2 header of a synthetic scan, written field by field from its ISMRMRD XML."""
    encoding = ismrmrd.xsd.CreateFromDocument(xml).encoding[0]

    def space(space) -> mrd.EncodingSpaceType:
        matrix, fov = space.matrixSize, space.fieldOfView_mm
        return mrd.EncodingSpaceType(matrix_size=mrd.MatrixSizeType(x=matrix.x, y=matrix.y, z=matrix.z),
                                     field_of_view_mm=mrd.FieldOfViewMm(x=fov.x, y=fov.y, z=fov.z))

    def limit(value) -> mrd.LimitType:
        return mrd.LimitType(minimum=value.minimum, maximum=value.maximum, center=value.center)

    limits = encoding.encodingLimits
    return mrd.Header(encoding=[mrd.EncodingType(
        encoded_space=space(encoding.encodedSpace), recon_space=space(encoding.reconSpace),
        encoding_limits=mrd.EncodingLimitsType(
            kspace_encoding_step_0=limit(limits.kspace_encoding_step_0),
            kspace_encoding_step_1=limit(limits.kspace_encoding_step_1),
            kspace_encoding_step_2=limit(limits.kspace_encoding_step_2), average=limit(limits.average),
            slice=limit(limits.slice), repetition=limit(limits.repetition)),
        trajectory=mrd.Trajectory.CARTESIAN)])


def mrd_acquisition(acquisition: ismrmrd.Acquisition) -> mrd.Acquisition:
    """The MRD v2 acquisition of an ISMRMRD one, field by field."""
    idx = acquisition.idx
    head = mrd.AcquisitionHeader(
        flags=mrd.AcquisitionFlags(acquisition.flags),
        idx=mrd.EncodingCounters(kspace_encode_step_1=idx.kspace_encode_step_1, average=idx.average, slice=idx.slice,
                                 contrast=idx.contrast, phase=idx.phase, repetition=idx.repetition, set=idx.set),
        measurement_uid=acquisition.measurement_uid, scan_counter=acquisition.scan_counter,
        acquisition_time_stamp=acquisition.acquisition_time_stamp,
        physiology_time_stamp=list(acquisition.physiology_time_stamp),
        channel_order=list(range(acquisition.active_channels)), discard_pre=acquisition.discard_pre,
        discard_post=acquisition.discard_post, center_sample=acquisition.center_sample,
        sample_time_us=acquisition.sample_time_us,
        position=np.array(acquisition.position, np.float32), read_dir=np.array(acquisition.read_dir, np.float32),
        phase_dir=np.array(acquisition.phase_dir, np.float32), slice_dir=np.array(acquisition.slice_dir, np.float32),
        patient_table_position=np.array(acquisition.patient_table_position, np.float32))
    return mrd.Acquisition(head=head, data=np.array(acquisition.data, np.complex64))


def mrd_stream(scan, extra: list[mrd.StreamItem] = ()) -> bytes:
    """The scan as an MRD v2 binary stream: its header, ``extra`` items, its acquisitions."""
    buffer = io.BytesIO()
    with mrd.BinaryMrdWriter(buffer) as writer:
        writer.write_header(mrd_header(scan.xml))
        writer.write_data([*extra, *(mrd.StreamItem.Acquisition(mrd_acquisition(a)) for a in scan.acquisitions)])
    return buffer.getvalue()


def read_stream(data: bytes) -> tuple[mrd.Header, list[mrd.StreamItem]]:
    with mrd.BinaryMrdReader(io.BytesIO(data)) as reader:
        header = reader.read_header()
        items = list(reader.read_data())
    return header, items


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("mrd_stream")


@pytest.fixture(scope="module")
def model_path(folder):
    return tiny_export(folder / "complex.onnx", image_channels=2)


@pytest.fixture(scope="module")
def scan():
    return synthetic_scan(coil_images(seed=4), acquired_lines=acquired_lines(), measurement_uid=77)


# ------------------------------------------------------------------------------------------------ the adapters
def test_mrd_v2_flags_are_the_ismrmrd_flag_bits():
    for ismrmrd_name, mrd_name in FLAG_PAIRS:
        assert int(mrd.AcquisitionFlags[mrd_name]) == 1 << (getattr(ismrmrd, ismrmrd_name) - 1)


def test_readout_from_mrd_equals_readout_from_ismrmrd():
    scan = synthetic_scan(coil_images(slices=2, coils=3), acquired_lines=acquired_lines(), averages=2,
                          noise_scans=2, reverse_odd_lines=True, asymmetric_echo=3)
    for acquisition in scan.acquisitions:
        ours, theirs = readout_from_mrd(mrd_acquisition(acquisition)), readout_from_ismrmrd(acquisition)
        for field in dataclasses.fields(ours):
            mine, expected = getattr(ours, field.name), getattr(theirs, field.name)
            assert np.array_equal(mine, expected) if field.name == "data" else mine == expected, field.name


def test_absent_optional_fields_read_as_ismrmrd_zeros():
    readout = readout_from_mrd(mrd.Acquisition(data=np.ones((2, 8), np.complex64)))
    assert (readout.kspace_encode_step_1, readout.average, tuple(readout.key)) == (0, 0, (0, 0, 0, 0, 0))
    assert (readout.center_sample, readout.discard_pre, readout.sample_time_us) == (0, 0, 0.0)
    assert readout.info.physiology_time_stamp == (0, 0, 0)


def test_encoding_geometry_of_an_mrd_header_equals_the_xml_one(scan):
    assert encoding_geometry(mrd_header(scan.xml), "stream") == EncodingGeometry.from_xml(scan.xml, "scan")


# ------------------------------------------------------------------------------------------------ the filter
def invoke(*args: str, stdin: bytes | None = None):
    return CliRunner().invoke(reconstruct_command, list(args), input=stdin)


def test_the_filter_writes_the_ismrmrd_path_images_as_an_mrd_v2_stream(model_path, scan, folder):
    waveform = mrd.StreamItem.WaveformUint32(mrd.WaveformUint32(data=np.zeros((1, 4), np.uint32)))
    stdin = mrd_stream(scan, extra=[waveform])
    result = invoke(str(model_path), "-", "--source", "mrd", stdin=stdin)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.startswith("standard output: 3 MRD v2 images")
    header, items = read_stream(result.stdout_bytes)
    assert header == mrd_header(scan.xml)  # the input header, passed through
    (folder / "offline").mkdir()
    expected = offline_images(model_path, scan, folder / "offline")
    assert len(items) == len(expected) == 3 and all(isinstance(item, mrd.StreamItem.ImageInt16) for item in items)
    for item, want in zip(items, expected, strict=True):
        image, head = item.value, want.getHead()
        assert image.data.shape == want.data.shape == (1, 1, SIZE[1], SIZE[0])
        assert image.data.dtype == want.data.dtype == np.int16  # the 16-bit magnitude convention, as served
        assert np.abs(image.data.astype(int) - want.data.astype(int)).max() <= INTEGER_TOLERANCE
        meta = {name: [value.value for value in values] for name, values in image.meta.items()}
        assert meta == {name: value if isinstance(value, list) else [value]
                        for name, value in ismrmrd.Meta.deserialize(want.attribute_string).items()}
        assert image.head.image_type == mrd.ImageType.MAGNITUDE
        assert (image.head.slice, image.head.image_index, image.head.image_series_index, image.head.measurement_uid) \
            == (head.slice, head.image_index, head.image_series_index, 77)
        for ours, theirs in [("field_of_view", "field_of_view"), ("position", "position"), ("col_dir", "read_dir"),
                             ("line_dir", "phase_dir"), ("slice_dir", "slice_dir")]:
            assert np.array_equal(getattr(image.head, ours), np.array(getattr(head, theirs), np.float32)), ours


def test_the_filter_writes_float32_and_complex_images_on_request(model_path, scan, folder):
    (folder / "offline_float").mkdir()
    raw = scan.write_ismrmrd(folder / "offline_float" / "scan.h5")
    for image_format, item_type in [("float32", mrd.StreamItem.ImageFloat),
                                    ("complex", mrd.StreamItem.ImageComplexFloat)]:
        result = invoke(str(model_path), "-", "--source", "mrd", "--image-format", image_format,
                        stdin=mrd_stream(scan))
        assert result.exit_code == 0, result.stderr
        items = read_stream(result.stdout_bytes)[1]
        images = folder / "offline_float" / f"{image_format}.h5"
        assert invoke(str(model_path), str(raw), "--source", "ismrmrd", "--out", str(folder / "o.h5"),
                      "--ismrmrd-out", str(images), "--image-format", image_format).exit_code == 0
        with ismrmrd.Dataset(str(images), "dataset", create_if_needed=False) as dataset:
            expected = [dataset.read_image("images_0", index) for index in range(3)]
        for item, want in zip(items, expected, strict=True):
            assert isinstance(item, item_type) and item.value.data.dtype == want.data.dtype
            np.testing.assert_allclose(item.value.data, want.data, rtol=0,
                                       atol=TOLERANCE * float(np.abs(want.data).max()))


def test_the_filter_writes_an_out_file_too(model_path, scan, tmp_path):
    source = tmp_path / "scan.mrd"
    source.write_bytes(mrd_stream(scan))
    result = invoke(str(model_path), str(source), "--source", "mrd", "--out", str(tmp_path / "images.mrd"))
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == b""
    assert len(read_stream((tmp_path / "images.mrd").read_bytes())[1]) == 3


@pytest.mark.parametrize(("damage", "message"), [
    (lambda data: b"not an mrd stream at all", "not a readable MRD v2 binary stream"),
    (lambda data: data[: len(data) * 2 // 3], "the MRD v2 stream is corrupt or truncated"),
])
def test_a_damaged_stream_is_one_line_and_exit_2(model_path, scan, damage, message):
    result = invoke(str(model_path), "-", "--source", "mrd", stdin=damage(mrd_stream(scan)))
    assert result.exit_code == 2 and result.stderr.startswith(f"Error: standard input: {message}")
    assert result.stderr.count("\n") == 1


def test_a_header_for_another_matrix_size_is_refused_before_any_output(model_path):
    other = synthetic_scan(coil_images(size=(20, 12)), acquired_lines=acquired_lines())
    result = invoke(str(model_path), "-", "--source", "mrd", stdin=mrd_stream(other))
    assert result.exit_code == 2 and result.stdout_bytes == b""
    assert "20x12" in result.stderr and f"{SIZE[0]}x{SIZE[1]}" in result.stderr


def test_misused_options_are_one_line_errors(model_path, scan, tmp_path):
    raw = scan.write_ismrmrd(tmp_path / "scan.h5")
    cases = [
        ([str(model_path), str(raw), "--source", "ismrmrd"], "--out is required"),
        ([str(model_path), "-", "--source", "ismrmrd", "--out", str(tmp_path / "o.h5")], "add --source mrd"),
        ([str(model_path), "-", "--source", "mrd", "--previews", str(tmp_path / "p")], "--previews cannot be used"),
        # options with defaults are refused when given, whatever the value
        ([str(model_path), "-", "--source", "mrd", "--batch-size", "8"], "--batch-size cannot be used"),
        ([str(model_path), "-", "--source", "mrd", "--no-progress", "--mask-uncentred"],
         "--mask-centred, --progress cannot be used"),
        ([str(model_path), "-", "--source", "mrd", "--uncentred"], "--centred cannot be used"),
        ([str(model_path), str(raw), "--source", "ismrmrd", "--out", str(tmp_path / "o.h5"), "--image-format",
          "float32"], "--image-format is for the images of --ismrmrd-out and --source mrd"),
    ]
    for args, message in cases:
        result = invoke(*args, stdin=b"")
        assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1, args
