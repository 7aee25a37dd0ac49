"""ISMRMRD raw acquisitions -> assembled slices (compressor.data.mrd_raw) against the synthesiser's oracle and
hand-computed placements."""

from __future__ import annotations

import dataclasses
import re

import h5py
import ismrmrd
import numpy as np
import pytest

from compressor.data.ismrmrd_file import read_ismrmrd_file
from compressor.data.mrd_header import EncodingGeometry
from compressor.data.mrd_raw import SliceAssembler, skipped_summary
from compressor.data.mrd_readout import SliceKey, readout_from_ismrmrd
from compressor.errors import InputError
from tests.conftest import shorten_acquisition_headers
from tests.synthetic_scans import encoding_header, synthetic_scan


def coil_images(slices: int = 2, coils: int = 3, height: int = 12, width: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (slices, coils, height, width)
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


def assemble(xml: str, acquisitions: list[ismrmrd.Acquisition]) -> tuple[SliceAssembler, list]:
    assembler = SliceAssembler(EncodingGeometry.from_xml(xml, "scan"), "scan")
    slices = []
    for acquisition in acquisitions:
        slices += assembler.add(readout_from_ismrmrd(acquisition))
    return assembler, slices + assembler.finish()


def edited_xml(xml: str, edit) -> str:
    header = ismrmrd.xsd.CreateFromDocument(xml)
    edit(header)
    return ismrmrd.xsd.ToXML(header)


LINES = np.array([1, 1, 1, 0, 1, 0, 0, 1, 0, 1], bool)  # uncentred: DC line and its neighbours, a few others


# ----------------------------------------------------------------------------------------------------- header
def test_geometry_from_header() -> None:
    scan = synthetic_scan(coil_images(), oversampling=2, acquired_lines=LINES, field_of_view_mm=(200.0, 180.0))
    geometry = EncodingGeometry.from_xml(scan.xml, "scan")
    assert geometry.encoded_matrix == (24, 10, 1) and geometry.recon_matrix == (12, 10, 1)
    assert geometry.readout_oversampling == 2.0
    assert geometry.image_shape == (12, 10)
    assert geometry.encoded_fov_mm == (400.0, 180.0, 5.0)
    assert geometry.image_fov_mm == (200.0, 180.0, 5.0)
    # centred lines acquired: fftshift(LINES) is True at 2, 4, 5, 6, 7, 9 -> limits 2..9, centre W // 2
    assert (geometry.step1_minimum, geometry.step1_maximum, geometry.step1_center) == (2, 9, 5)
    assert geometry.trajectory == "cartesian"


def _radial(header) -> None:
    header.encoding[0].trajectory = ismrmrd.xsd.trajectoryType.RADIAL


def _three_d(header) -> None:
    header.encoding[0].encodedSpace.matrixSize.z = 8


def _step2(header) -> None:
    header.encoding[0].encodingLimits.kspace_encoding_step_2.maximum = 7


def _two_encodings(header) -> None:
    header.encoding.append(header.encoding[0])


def _no_encoding(header) -> None:
    header.encoding.clear()


def _interpolated(header) -> None:
    header.encoding[0].reconSpace.matrixSize.x = 48


@pytest.mark.parametrize(("edit", "message"), [
    (_radial, "trajectory 'radial' is not Cartesian; only Cartesian scans are supported"),
    (_three_d, "3-D encoding (encoded matrix z = 8, kspace_encoding_step_2 up to 0)"),
    (_step2, "3-D encoding (encoded matrix z = 1, kspace_encoding_step_2 up to 7)"),
    (_two_encodings, "2 encoding spaces"),
    (_no_encoding, "no encoding"),
    (_interpolated, "the recon matrix readout (48) is larger than the encoded one (24)"),
])
def test_header_refusals(edit, message: str) -> None:
    xml = edited_xml(synthetic_scan(coil_images(1, 1)).xml, edit)
    with pytest.raises(InputError, match=r"^scan\.h5: ") as error:
        EncodingGeometry.from_xml(xml, "scan.h5")
    assert message in str(error.value)


def _no_limits(header) -> None:
    header.encoding[0].encodingLimits = None


def _no_matrix(header) -> None:
    header.encoding[0].reconSpace.matrixSize = None


def _no_fov(header) -> None:
    header.encoding[0].encodedSpace.fieldOfView_mm = None


@pytest.mark.parametrize(("edit", "missing"), [
    (_no_limits, "encodingLimits"),
    (_no_matrix, "reconSpace.matrixSize"),
    (_no_fov, "encodedSpace.fieldOfView_mm"),
])
def test_header_without_a_required_element(edit, missing: str) -> None:
    """A header without what the geometry is read from is one line naming the element: as a document, xsdata's
    parser refuses it (the element is required); as header objects built in code (the server's deserializer, the
    MRD v2 adapter) the geometry's own check does."""
    header = ismrmrd.xsd.CreateFromDocument(synthetic_scan(coil_images(1, 1)).xml)
    edit(header)
    with pytest.raises(InputError) as error:
        EncodingGeometry.from_header(header, "scan.h5")
    assert str(error.value) == f"scan.h5: the ISMRMRD XML header's encoding has no {missing}"
    with pytest.raises(InputError) as error:
        EncodingGeometry.from_xml(ismrmrd.xsd.ToXML(header), "scan.h5")
    assert str(error.value).startswith("scan.h5: the ISMRMRD XML header cannot be parsed (")
    assert missing.split(".")[-1] in str(error.value) and "\n" not in str(error.value)


def test_unparsable_header() -> None:
    with pytest.raises(InputError, match=r"^scan.h5: the ISMRMRD XML header cannot be parsed"):
        EncodingGeometry.from_xml("<ismrmrdHeader><encoding>", "scan.h5")


# ----------------------------------------------------------------------------------------------------- placement
def _acquisition(data: np.ndarray, step1: int, center_sample: int, *flags: int) -> ismrmrd.Acquisition:
    acquisition = ismrmrd.Acquisition.from_array(data.astype(np.complex64), center_sample=center_sample,
                                                 idx=ismrmrd.EncodingCounters(kspace_encode_step_1=step1))
    for flag in flags:
        acquisition.set_flag(flag)
    return acquisition


def test_placement_follows_step1_centre_and_center_sample() -> None:
    """Hand-computed: 8 readout samples, 6 lines, header centre line 2 (so step1 2 is the DC line, centred column 3).
    A 5-sample asymmetric echo with center_sample 1 fills centred rows 3..7; the tool's uncentred k-space is
    ifftshift of the centred grid times (-1)^k along each axis (even sizes: fft2 of the scanner's centred image)."""
    xml = encoding_header((8, 6, 1), (8, 6, 1), (100.0, 90.0, 5.0), (100.0, 90.0, 5.0), (0, 5, 2))
    samples = np.arange(1, 6, dtype=np.complex64)[None]
    dc_line = _acquisition(samples, 2, 1)
    next_line = _acquisition(10 * samples, 3, 1, ismrmrd.ACQ_LAST_IN_SLICE)
    _, (assembled,) = assemble(xml, [dc_line, next_line])
    expected = np.zeros((1, 8, 6), np.complex64)
    # centred rows 3, 4, 5, 6, 7 -> uncentred rows 7, 0, 1, 2, 3; times (-1)^row
    expected[0, [7, 0, 1, 2, 3], 0] = [-1, 2, -3, 4, -5]
    # step1 3 -> centred column 4 -> uncentred column 1, times (-1)^1
    expected[0, [7, 0, 1, 2, 3], 1] = [10, -20, 30, -40, 50]
    np.testing.assert_allclose(assembled.kspace, expected, atol=1e-6)
    np.testing.assert_array_equal(assembled.acquired_lines, [True, True, False, False, False, False])
    np.testing.assert_array_equal(assembled.readout_sampled, [True, True, True, True, False, False, False, True])


def test_discarded_samples_are_dropped() -> None:
    """10 samples, the first and last discarded, centre sample 5 on an 8-sample readout: samples 1..8 fill centred
    rows 0..7 (sample 5 at row 4 = Nx // 2)."""
    xml = encoding_header((8, 4, 1), (8, 4, 1), (100.0, 90.0, 5.0), (100.0, 90.0, 5.0), (0, 3, 2))
    acquisition = _acquisition(np.arange(10, dtype=np.complex64)[None], 2, 5, ismrmrd.ACQ_LAST_IN_SLICE)
    acquisition.discard_pre, acquisition.discard_post = 1, 1
    _, (assembled,) = assemble(xml, [acquisition])
    centred = np.arange(1, 9)  # rows 0..7
    np.testing.assert_allclose(assembled.kspace[0, :, 0], np.fft.ifftshift(centred) * (-1.0) ** np.arange(8),
                               atol=1e-6)
    assert assembled.readout_sampled.all()


def test_reversed_readout_discards_in_acquisition_order() -> None:
    """Hand-computed, independent of the synthesiser: 10 samples acquired (values 1..10 in acquisition order) on an
    8-sample encoded readout, ACQ_IS_REVERSE, discard_pre 2, discard_post 1, centre sample 4 (not n / 2).

    The discards count in acquisition order: values 1, 2 (first acquired) and 10 (last) are dropped. Flipped, the
    k-ordered sample s' holds value 10 - s', so the kept values 9 .. 3 are samples 1 .. 7; the centre sample 4
    (value 6) goes to centred row Nx // 2 = 4, so samples 1 .. 7 fill centred rows 1 .. 7 and row 0 stays empty.
    Swapping the discards wrongly would keep values 8 .. 2 instead."""
    xml = encoding_header((8, 4, 1), (8, 4, 1), (100.0, 90.0, 5.0), (100.0, 90.0, 5.0), (0, 3, 2))
    acquisition = _acquisition(np.arange(1, 11, dtype=np.complex64)[None], 2, 4, ismrmrd.ACQ_IS_REVERSE,
                               ismrmrd.ACQ_LAST_IN_SLICE)
    acquisition.discard_pre, acquisition.discard_post = 2, 1
    _, (assembled,) = assemble(xml, [acquisition])
    centred = np.array([0, 9, 8, 7, 6, 5, 4, 3])
    # step1 2 is the centre line: centred column 2 = W // 2 -> uncentred column 0 (phase ramp 1)
    np.testing.assert_allclose(assembled.kspace[0, :, 0], np.fft.ifftshift(centred) * (-1.0) ** np.arange(8),
                               atol=1e-6)
    np.testing.assert_array_equal(assembled.readout_sampled, np.fft.ifftshift(np.arange(8) >= 1))


def test_line_outside_the_encoded_matrix_is_refused() -> None:
    xml = encoding_header((8, 6, 1), (8, 6, 1), (100.0, 90.0, 5.0), (100.0, 90.0, 5.0), (0, 5, 2))
    with pytest.raises(InputError, match="kspace_encode_step_1 = 6 lies outside the 6 encoded lines"):
        assemble(xml, [_acquisition(np.ones((1, 8)), 6, 4)])


def test_readout_that_does_not_fit_is_refused() -> None:
    xml = encoding_header((8, 6, 1), (8, 6, 1), (100.0, 90.0, 5.0), (100.0, 90.0, 5.0), (0, 5, 3))
    with pytest.raises(InputError, match=r"a readout of 8 samples \(centre sample 2, .*does not fit"):
        assemble(xml, [_acquisition(np.ones((1, 8)), 3, 2)])


# ----------------------------------------------------------------------------------------------------- oracle
@pytest.mark.parametrize(("height", "width", "oversampling"), [(12, 10, 2), (11, 9, 2), (12, 10, 3), (12, 10, 1)])
def test_assembly_equals_oracle(height: int, width: int, oversampling: int) -> None:
    lines = np.zeros(width, bool)
    lines[[0, 1, 2, 4, width - 1]] = True
    scan = synthetic_scan(coil_images(2, 3, height, width), oversampling=oversampling, acquired_lines=lines)
    assembler, slices = assemble(scan.xml, scan.acquisitions)
    assert [item.key for item in slices] == [SliceKey(0, 0, 0, 0, 0), SliceKey(1, 0, 0, 0, 0)]
    for item in slices:
        assert item.kspace.shape == (3, height, width) and item.kspace.dtype == np.complex64
        np.testing.assert_allclose(item.kspace, scan.expected_kspace[item.key], atol=1e-5)
        np.testing.assert_array_equal(item.acquired_lines, lines)
        assert np.all(item.kspace[:, :, ~lines] == 0)  # not acquired: exactly zero
        assert item.readout_sampled.all() and item.averages == 1
    assert assembler.image_readouts == 2 * lines.sum() and not assembler.skipped


def test_partial_fourier_with_shifted_counters_equals_oracle() -> None:
    """Partial Fourier: of 10 lines, centred columns 3 .. 9 acquired; the counters start at 1 with the centre line at
    counter 3 (not W // 2 = 5), so every counter is the centred column - 2."""
    centred = np.arange(10) >= 3
    lines = np.fft.ifftshift(centred)
    scan = synthetic_scan(coil_images(2, 2), acquired_lines=lines, step1_center=3)
    geometry = EncodingGeometry.from_xml(scan.xml, "scan")
    assert (geometry.step1_minimum, geometry.step1_maximum, geometry.step1_center) == (1, 7, 3)
    image_lines = [a for a in scan.acquisitions if not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    assert sorted({a.idx.kspace_encode_step_1 for a in image_lines}) == list(range(1, 8))
    _, slices = assemble(scan.xml, scan.acquisitions)
    for item in slices:
        np.testing.assert_array_equal(item.acquired_lines, lines)
        np.testing.assert_allclose(item.kspace, scan.expected_kspace[item.key], atol=1e-5)


def test_reversed_readouts_are_flipped() -> None:
    scan = synthetic_scan(coil_images(1), acquired_lines=LINES, reverse_odd_lines=True)
    assert sum(acquisition.is_flag_set(ismrmrd.ACQ_IS_REVERSE) for acquisition in scan.acquisitions) == 3
    _, (assembled,) = assemble(scan.xml, scan.acquisitions)
    np.testing.assert_allclose(assembled.kspace, scan.expected_kspace[assembled.key], atol=1e-5)


def test_asymmetric_echo_leaves_missing_samples_zero() -> None:
    scan = synthetic_scan(coil_images(1, 2, 12, 10), oversampling=1, asymmetric_echo=3)
    _, (assembled,) = assemble(scan.xml, scan.acquisitions)
    centred_sampled = np.ones(12, bool)
    centred_sampled[:3] = False
    np.testing.assert_array_equal(assembled.readout_sampled, np.fft.ifftshift(centred_sampled))
    np.testing.assert_allclose(assembled.kspace, scan.expected_kspace[assembled.key], atol=1e-5)
    assert np.all(np.abs(assembled.kspace[:, ~assembled.readout_sampled]) < 1e-6)


def test_asymmetric_echo_with_oversampling_maps_the_gap() -> None:
    """Oversampled by 2, 6 of 24 samples missing: the first 3 positions of the 12-sample grid (same k, coarser)."""
    scan = synthetic_scan(coil_images(1, 1, 12, 10), oversampling=2, asymmetric_echo=6)
    _, (assembled,) = assemble(scan.xml, scan.acquisitions)
    np.testing.assert_array_equal(np.fft.fftshift(assembled.readout_sampled), np.arange(12) >= 3)


def test_averages_are_averaged_and_complete_the_slice_at_the_last_average() -> None:
    scan = synthetic_scan(coil_images(1), acquired_lines=LINES, averages=2)
    for acquisition in scan.acquisitions:
        if acquisition.idx.average == 1:
            acquisition.data[:] *= 3  # mean of 1x and 3x: 2x
    assembler = SliceAssembler(EncodingGeometry.from_xml(scan.xml, "scan"), "scan")
    completed = [assembler.add(readout_from_ismrmrd(acquisition)) for acquisition in scan.acquisitions]
    # ACQ_LAST_IN_SLICE ends each average; only the last average's completes the slice
    assert [index for index, items in enumerate(completed) if items] == [len(scan.acquisitions) - 1]
    (assembled,) = completed[-1]
    assert assembled.averages == 2 and assembler.finish() == []
    np.testing.assert_allclose(assembled.kspace, 2 * scan.expected_kspace[assembled.key], atol=1e-5)


def _without_average_limit(header) -> None:
    header.encoding[0].encodingLimits.average = None


def test_nex_2_without_the_header_limit_is_refused_not_split() -> None:
    """ACQ_LAST_IN_SLICE ends each average; a header without encodingLimits.average completes the slice after the
    first, so the second average's first readout is refused rather than starting a second image of the slice."""
    scan = synthetic_scan(coil_images(1), acquired_lines=LINES, averages=2)
    xml = edited_xml(scan.xml, _without_average_limit)
    with pytest.raises(InputError) as error:
        assemble(xml, scan.acquisitions)
    assert str(error.value) == (
        "scan: a readout for slice (0, 0, 0, 0, 0) after it was complete: the header's encodingLimits.average "
        "maximum is 0 but average 1 arrived (NEX > 1 data with a header without that limit, or slice indices "
        "repeated)")


def test_a_slice_sent_again_after_completion_is_refused() -> None:
    scan = synthetic_scan(coil_images(1), acquired_lines=LINES)
    with pytest.raises(InputError, match=r"a readout for slice \(0, 0, 0, 0, 0\) after it was complete: .*"
                                         r"maximum is 0 but average 0 arrived"):
        assemble(scan.xml, scan.acquisitions + scan.acquisitions)


def test_slices_and_repetitions_are_separate_images() -> None:
    scan = synthetic_scan(coil_images(3), acquired_lines=LINES, repetitions=2, measurement_uid=77)
    assembler = SliceAssembler(EncodingGeometry.from_xml(scan.xml, "scan"), "scan")
    completed_after = {}
    for number, acquisition in enumerate(scan.acquisitions):
        for item in assembler.add(readout_from_ismrmrd(acquisition)):
            completed_after[item.key] = (number, item)
    assert list(completed_after) == [SliceKey(s, 0, 0, r, 0) for r in range(2) for s in range(3)]
    per_slice = LINES.sum()
    assert [number for number, _ in completed_after.values()] == [per_slice * (i + 1) - 1 for i in range(6)]
    for key, (_, item) in completed_after.items():
        np.testing.assert_allclose(item.kspace, scan.expected_kspace[key], atol=1e-5)
        assert item.info.position == (0.0, 0.0, (key.slice - 1) * 5.0)
        assert item.info.read_dir == (1.0, 0.0, 0.0) and item.info.slice_dir == (0.0, 0.0, 1.0)
        assert item.info.measurement_uid == 77
    np.testing.assert_allclose(completed_after[SliceKey(0, 0, 0, 1, 0)][1].kspace,
                               2 * completed_after[SliceKey(0, 0, 0, 0, 0)][1].kspace, rtol=1e-5, atol=1e-5)


def test_representative_readout_is_the_centre_line() -> None:
    scan = synthetic_scan(coil_images(1), acquired_lines=LINES)
    _, (assembled,) = assemble(scan.xml, scan.acquisitions)
    centre = next(acquisition for acquisition in scan.acquisitions if acquisition.idx.kspace_encode_step_1 == 5)
    assert assembled.info.acquisition_time_stamp == centre.acquisition_time_stamp


# ----------------------------------------------------------------------------------------------------- noise
def test_noise_prewhitening() -> None:
    covariance = np.array([[2.0, 0.6 + 0.5j, 0.1], [0.6 - 0.5j, 1.0, 0.2j], [0.1, -0.2j, 0.5]])
    scan = synthetic_scan(coil_images(2), acquired_lines=LINES, noise_scans=400, noise_covariance=covariance)
    assembler, slices = assemble(scan.xml, scan.acquisitions)
    whitening = assembler.prewhitening
    noise = np.concatenate([acquisition.data for acquisition in scan.acquisitions
                            if acquisition.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)], axis=1)
    sample_covariance = noise @ noise.conj().T / noise.shape[1]
    np.testing.assert_allclose(whitening @ sample_covariance @ whitening.conj().T, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(whitening @ covariance @ whitening.conj().T, np.eye(3), atol=0.1)  # 9600 samples
    assert np.allclose(np.triu(whitening, 1), 0)  # the inverse of a Cholesky factor
    assert assembler.noise_readouts == 400
    for item in slices:
        expected = np.einsum("ij,jhw->ihw", whitening, scan.expected_kspace[item.key])
        np.testing.assert_allclose(item.kspace, expected, atol=1e-5)


def test_noise_with_another_dwell_time_is_rescaled() -> None:
    scan = synthetic_scan(coil_images(1, 2), noise_scans=50)
    reference = assemble(scan.xml, scan.acquisitions)[0].prewhitening
    for acquisition in scan.acquisitions:
        if acquisition.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
            acquisition.sample_time_us = 4 * acquisition.sample_time_us
    np.testing.assert_allclose(assemble(scan.xml, scan.acquisitions)[0].prewhitening, reference / 2, rtol=1e-6)


def test_set_aside_readouts_are_counted() -> None:
    scan = synthetic_scan(coil_images(1, 2), acquired_lines=LINES, noise_scans=5)
    image_lines = scan.acquisitions[5:]
    extra = []
    for flag in (ismrmrd.ACQ_IS_NAVIGATION_DATA, ismrmrd.ACQ_IS_PHASECORR_DATA, ismrmrd.ACQ_IS_PHASECORR_DATA,
                 ismrmrd.ACQ_IS_PARALLEL_CALIBRATION, ismrmrd.ACQ_IS_DUMMYSCAN_DATA):
        copy = ismrmrd.Acquisition(image_lines[0].getHead(), image_lines[0].data * 100)
        copy.clear_all_flags()
        copy.set_flag(flag)
        extra.append(copy)
    # a calibration line that is also an image line counts as image data
    calibration_and_imaging = image_lines[1]
    calibration_and_imaging.set_flag(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)
    calibration_and_imaging.set_flag(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)
    assembler, (assembled,) = assemble(scan.xml, [*scan.acquisitions[:5], *extra, *image_lines])
    assert dict(assembler.skipped) == {"navigator": 1, "phase correction": 2, "parallel calibration only": 1,
                                       "dummy scan": 1}
    assert assembler.image_readouts == LINES.sum()
    np.testing.assert_allclose(assembled.kspace, np.einsum("ij,jhw->ihw", assembler.prewhitening,
                                                           scan.expected_kspace[assembled.key]), atol=1e-5)
    assert skipped_summary(dict(assembler.skipped), assembler.noise_readouts) == (
        "5 noise (prewhitening), 1 navigator, 2 phase correction, 1 parallel calibration only, 1 dummy scan")


# ----------------------------------------------------------------------------------------------------- files
def test_read_file_equals_streaming(tmp_path) -> None:
    scan = synthetic_scan(coil_images(2), acquired_lines=LINES, noise_scans=20, repetitions=2)
    path = scan.write_ismrmrd(tmp_path / "scan.h5")
    raw = read_ismrmrd_file(path)
    _, streamed = assemble(scan.xml, scan.acquisitions)
    assert raw.noise_readouts == 20 and raw.skipped == {}
    assert [item.key for item in raw.slices] == [item.key for item in streamed]
    for from_file, from_stream in zip(raw.slices, streamed, strict=True):
        np.testing.assert_array_equal(from_file.kspace, from_stream.kspace)
        assert from_file.info == from_stream.info
    with ismrmrd.Dataset(str(path), "dataset", create_if_needed=False) as dataset:  # the library reads it back
        assert dataset.number_of_acquisitions() == len(scan.acquisitions)
        assert dataset.read_acquisition(20).idx.kspace_encode_step_1 == scan.acquisitions[20].idx.kspace_encode_step_1


def test_other_group(tmp_path) -> None:
    scan = synthetic_scan(coil_images(1), acquired_lines=LINES)
    path = scan.write_ismrmrd(tmp_path / "scan.h5", group="raw")
    assert len(read_ismrmrd_file(path, group="raw").slices) == 1
    with pytest.raises(InputError, match=r"scan.h5: not an ISMRMRD file \(no /dataset/xml\)"):
        read_ismrmrd_file(path)


def test_wrong_data_length_in_file(tmp_path) -> None:
    scan = synthetic_scan(coil_images(1), acquired_lines=LINES)
    path = scan.write_ismrmrd(tmp_path / "scan.h5")
    with h5py.File(path, "r+") as file:
        row = file["dataset/data"][3]
        row["data"] = row["data"][:-2]
        file["dataset/data"][3] = row
    with pytest.raises(InputError, match=r"scan.h5: acquisition 3 holds 142 float values but its header says "
                                         r"24 samples x 3 channels \(144 values\)"):
        read_ismrmrd_file(path)


def _rewrite_xml(path, make) -> None:
    with h5py.File(path, "r+") as file:
        xml = file["dataset/xml"][0]
        del file["dataset/xml"]
        make(file["dataset"], xml)


def test_scalar_xml_dataset_is_read(tmp_path) -> None:
    scan = synthetic_scan(coil_images(1), acquired_lines=LINES)
    path = scan.write_ismrmrd(tmp_path / "scan.h5")
    _rewrite_xml(path, lambda group, xml: group.create_dataset("xml", data=xml))  # scalar bytes, no (1,) array
    raw = read_ismrmrd_file(path)
    assert len(raw.slices) == 1 and raw.geometry.image_shape == (12, 10)


@pytest.mark.parametrize(("make", "description"), [
    (lambda group, xml: group.create_dataset("xml", data=np.arange(3)), "dtype int64, shape (3,)"),
    (lambda group, xml: group.create_dataset("xml", data=[xml, xml]), "shape (2,)"),
])
def test_xml_dataset_that_is_not_one_string(tmp_path, make, description: str) -> None:
    scan = synthetic_scan(coil_images(1), acquired_lines=LINES)
    path = scan.write_ismrmrd(tmp_path / "scan.h5")
    _rewrite_xml(path, make)
    with pytest.raises(InputError, match=r"^.*scan\.h5: /dataset/xml is not one string \(.*" + re.escape(description)):
        read_ismrmrd_file(path)


def test_acquisition_header_of_another_size(tmp_path) -> None:
    scan = synthetic_scan(coil_images(1), acquired_lines=LINES)
    path = scan.write_ismrmrd(tmp_path / "scan.h5")
    shorten_acquisition_headers(path, 100)
    with pytest.raises(InputError, match=r"scan\.h5: acquisition 0 has a header of 100 bytes; an ISMRMRD acquisition "
                                         r"header has 340$"):
        read_ismrmrd_file(path)


def test_wrong_data_length_in_acquisition() -> None:
    acquisition = synthetic_scan(coil_images(1), acquired_lines=LINES).acquisitions[0]
    broken = ismrmrd.Acquisition(acquisition.getHead(), np.zeros((3, 20), np.complex64))
    with pytest.raises(InputError, match="stream: acquisition 1 holds 60 samples but its header says 24 samples x 3"):
        readout_from_ismrmrd(broken, "stream")


def test_noise_only_file(tmp_path) -> None:
    scan = synthetic_scan(coil_images(1), noise_scans=4)
    noise_only = dataclasses.replace(scan, acquisitions=scan.acquisitions[:4])
    path = noise_only.write_ismrmrd(tmp_path / "noise.h5")
    with pytest.raises(InputError, match=r"noise.h5: the file holds only noise acquisitions \(4\), no image data"):
        read_ismrmrd_file(path)


@pytest.mark.parametrize("missing", ["xml", "data"])
def test_not_an_ismrmrd_file(tmp_path, missing: str) -> None:
    scan = synthetic_scan(coil_images(1), acquired_lines=LINES)
    path = scan.write_ismrmrd(tmp_path / "scan.h5")
    with h5py.File(path, "r+") as file:
        del file[f"dataset/{missing}"]
    with pytest.raises(InputError, match=rf"scan.h5: not an ISMRMRD file \(no /dataset/{missing}\)"):
        read_ismrmrd_file(path)


def test_not_hdf5(tmp_path) -> None:
    path = tmp_path / "scan.h5"
    path.write_text("not HDF5")
    with pytest.raises(InputError, match=r"scan\.h5: not an HDF5 file"):
        read_ismrmrd_file(path)
