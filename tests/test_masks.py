"""Cartesian masks: exact line counts, centre band, determinism, conventions, validation of user masks, line axis."""

from __future__ import annotations

import numpy as np
import pytest

from compressor.errors import ConventionError, InputError
from compressor.masks import (
    EquispacedMask,
    SamplingMask,
    VariableDensityMask,
    is_whole_lines,
    line_axis,
    load_mask,
    make_mask,
    validate_mask,
)


@pytest.mark.parametrize("kind", ["random", "equispaced"])
@pytest.mark.parametrize("acceleration", [4, 5, 8])
@pytest.mark.parametrize("width", [240, 150, 37])
def test_exactly_round_n_over_r_whole_lines(kind, acceleration, width):
    mask = make_mask(kind, acceleration, (20, width), seed=1)
    lines = mask.values[0]
    assert int(lines.sum()) == round(width / acceleration)
    assert mask.phase_encode_axis == -1  # whole phase-encode lines: every row identical
    assert set(np.unique(mask.values)) <= {0.0, 1.0}


@pytest.mark.parametrize("acceleration", [4, 5, 8])
def test_centre_band_is_fully_sampled_around_dc(acceleration):
    mask_func = VariableDensityMask(acceleration)
    mask = mask_func((8, 240), seed=7)
    _, n_centre = mask_func.line_counts(240)
    assert n_centre == round(240 * 0.32 / acceleration)
    centred = mask.centred()[0]
    band = centred[120 - n_centre // 2: 120 - n_centre // 2 + n_centre]
    assert band.all()
    assert mask.values[0, 0] == 1  # DC at index 0 in the internal (uncentred) convention


def test_random_masks_are_deterministic_per_seed_and_differ_across_seeds():
    a = make_mask("random", 4, (16, 128), seed=5).values
    b = make_mask("random", 4, (16, 128), seed=5).values
    c = make_mask("random", 4, (16, 128), seed=6).values
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_variable_density_prefers_low_frequencies():
    counts = np.zeros(240)
    for seed in range(40):
        counts += make_mask("random", 8, (1, 240), seed=seed).centred()[0]
    centre, edge = counts[90:150].mean(), np.r_[counts[:30], counts[-30:]].mean()
    assert centre > 2 * edge


def test_equispaced_lines_are_evenly_spread():
    mask = EquispacedMask(4, center_fraction=0.04)((1, 200), seed=0)
    outside = np.flatnonzero(mask.centred()[0])
    gaps = np.diff(outside)
    assert gaps.max() <= 6


def test_digest_identifies_the_mask():
    assert make_mask("random", 4, (8, 32), 0).digest() == make_mask("random", 4, (8, 32), 0).digest()
    assert make_mask("random", 4, (8, 32), 0).digest() != make_mask("random", 5, (8, 32), 0).digest()


def test_load_mask_converts_centred_files(tmp_path):
    mask = make_mask("random", 4, (12, 32), seed=2)
    np.save(tmp_path / "centred.npy", mask.centred())
    np.save(tmp_path / "uncentred.npy", mask.values)
    assert np.array_equal(load_mask(tmp_path / "centred.npy", (12, 32), centred=True).values, mask.values)
    assert np.array_equal(load_mask(tmp_path / "uncentred.npy", (12, 32), centred=False).values, mask.values)
    line = load_mask(tmp_path / "uncentred.npy", (12, 32), centred=False)
    assert line.effective_acceleration == pytest.approx(32 / 8)


def test_declaring_the_wrong_convention_is_an_error(tmp_path):
    mask = make_mask("random", 4, (12, 32), seed=2)
    np.save(tmp_path / "centred.npy", mask.centred())
    with pytest.raises(ConventionError, match=r"centred=True"):
        load_mask(tmp_path / "centred.npy", (12, 32), centred=False)


@pytest.mark.parametrize(
    "values, message",
    [
        (np.zeros((12, 32)), "empty"),
        (np.full((12, 32), 0.5), "not binary"),
        (np.ones((10, 32)), "does not fit"),
        (np.full((12, 32), np.nan), "NaN"),
        (np.ones((2, 12, 32)), "2-D"),
    ],
)
def test_bad_user_masks_are_rejected_with_the_file_name(tmp_path, values, message):
    path = tmp_path / "bad.npy"
    np.save(path, values)
    with pytest.raises(InputError, match=message) as error:
        load_mask(path, (12, 32), centred=False)
    assert "bad.npy" in str(error.value)


def test_missing_or_corrupt_mask_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_mask(tmp_path / "absent.npy", (4, 4), centred=False)
    (tmp_path / "corrupt.npy").write_bytes(b"not numpy")
    with pytest.raises(InputError, match=r"corrupt\.npy"):
        load_mask(tmp_path / "corrupt.npy", (4, 4), centred=False)


def test_one_dimensional_line_pattern_is_accepted():
    lines = np.zeros(16)
    lines[[0, 1, 15, 8]] = 1
    mask = validate_mask(lines, (6, 16), centred=False)
    assert mask.shape == (6, 16) and mask.phase_encode_axis == -1


# --- the line axis, found in one place ---------------------------------------------------------------------------

def lines_along(axis: int, shape: tuple[int, int] = (6, 10)) -> np.ndarray:
    """Whole lines varying along ``axis``: a 0/1 pattern along it, repeated along the other axis."""
    pattern = np.zeros(shape[axis], np.float32)
    pattern[[0, 1, 4]] = 1
    return np.broadcast_to(pattern[None, :] if axis == -1 else pattern[:, None], shape).copy()


@pytest.mark.parametrize("axis", [-1, -2])
def test_whole_line_masks_report_their_axis(axis):
    values = lines_along(axis)
    assert line_axis(values) == axis and is_whole_lines(values, axis)
    assert not is_whole_lines(values, -3 - axis)  # -1 <-> -2
    assert SamplingMask(values).phase_encode_axis == axis


def test_a_mask_that_is_not_lines_has_no_line_axis():
    values = lines_along(-1)
    values[2, 5] = 1  # one stray sample breaks the columns
    assert line_axis(values) is None and SamplingMask(values).phase_encode_axis is None
    assert not is_whole_lines(values, -1) and not is_whole_lines(values, -2)


def test_a_constant_mask_is_lines_along_both_axes_and_reports_the_last():
    values = np.ones((4, 5), np.float32)
    assert is_whole_lines(values, -1) and is_whole_lines(values, -2) and line_axis(values) == -1


def test_generated_masks_are_whole_columns():
    assert line_axis(make_mask("random", 4, (12, 20), seed=2).values) == -1


def test_only_the_two_image_axes_are_line_axes():
    with pytest.raises(ValueError, match="line axis must be -1 or -2"):
        is_whole_lines(np.ones((4, 4)), 0)
