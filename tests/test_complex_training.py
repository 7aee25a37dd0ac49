"""The complex (2-channel) path from data to trained stages: channel conventions, the synthetic phase, the scored
region, the 2-channel dataset, presets, stage keys and a smoke run of the five stages on phased data."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from compressor import rundir
from compressor.config import apply_overrides, load_config
from compressor.data import SliceDataset, build_splits, open_volume, write_project_volume
from compressor.data.phase import synthetic_phase, with_synthetic_phase
from compressor.data.transforms import centre_crop, scored_image
from compressor.errors import InputError
from compressor.evaluate.metrics import slice_metrics
from compressor.io import load_json
from compressor.masks import make_mask
from compressor.models import ModelOptions, build_model
from compressor.physics import channel_magnitude, channels_to_pair, fft2, normalise_kspace, pair_to_channels
from compressor.training.pipeline import Pipeline
from compressor.training.preflight import check_run
from compressor.training.stages import plan_run
from tests.conftest import smooth_image


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SFT_KD_RECON_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


# -- models ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("arch", "real", "complex_"), [("d5c5", 141_765, 144_650), ("d4c5", 95_525, 98_410),
                                                        ("d3c5", 49_285, 52_170), ("d2c5", 3_045, 5_930)])
def test_two_image_channels_add_577_parameters_per_cascade(arch, real, complex_):
    # conv(2→32) has 9·32 more weights than conv(1→32); conv(32→2) 9·32 + 1 more than conv(32→1): 577 per block.
    assert build_model(arch).num_parameters() == real
    assert build_model(arch, ModelOptions(image_channels=2)).num_parameters() == complex_ == real + 5 * 577


@pytest.mark.parametrize("arch", ["dcunet5", "vdsr12", "rcnn25"])
def test_other_families_stay_real_valued(arch):
    with pytest.raises(InputError, match="real images only"):
        build_model(arch, ModelOptions(image_channels=2))


def test_a_two_channel_models_output_keeps_every_measured_sample_for_any_binary_mask():
    """λ → ∞ on the complex image: the model's output has exactly the measured k-space where the mask (random points,
    not lines) sampled, with no real part taken, and one more DF changes nothing."""
    torch.manual_seed(0)
    model = build_model("d3c2", ModelOptions(width=8, image_channels=2)).eval()
    rng = np.random.default_rng(0)
    mask = torch.from_numpy((rng.random((12, 10)) < 0.4).astype(np.float32))[None, None]
    image = rng.standard_normal((2, 12, 10)) + 1j * rng.standard_normal((2, 12, 10))
    kspace = torch.view_as_real(torch.from_numpy(np.fft.fft2(image, norm="ortho").astype(np.complex64)))[:, None]
    zero_filled, measured, _ = normalise_kspace(kspace * mask[..., None], channels=2)
    with torch.no_grad():
        output = model(zero_filled, measured, mask)
        again = model.cascades[-1].data_fidelity(output, measured, mask, model.fourier)
    predicted = fft2(channels_to_pair(output))
    sampled = mask[0, 0].bool()
    torch.testing.assert_close(predicted[:, 0][:, sampled], measured[:, 0][:, sampled], atol=1e-6, rtol=0)
    torch.testing.assert_close(again, output, atol=1e-6, rtol=0)


def test_channel_pairs_round_trip_and_magnitude():
    image = torch.randn(3, 2, 5, 4, dtype=torch.float64)
    pair = channels_to_pair(image)
    assert pair.shape == (3, 1, 5, 4, 2)
    assert torch.equal(pair[:, 0, ..., 1], image[:, 1])
    assert torch.equal(pair_to_channels(pair, 2), image)
    expected = torch.view_as_complex(pair.contiguous()).abs()
    torch.testing.assert_close(channel_magnitude(image), expected)
    real = torch.randn(3, 1, 5, 4)
    assert torch.equal(pair_to_channels(channels_to_pair(real), 1), real)


def test_two_channel_normalisation_divides_by_the_largest_magnitude():
    rng = np.random.default_rng(0)
    image = (rng.standard_normal((2, 8, 6)) + 1j * rng.standard_normal((2, 8, 6))).astype(np.complex64)
    kspace = torch.view_as_real(torch.from_numpy(np.fft.fft2(image, norm="ortho").astype(np.complex64)))[:, None]
    zero_filled, normalised_kspace, scale = normalise_kspace(kspace, channels=2)
    assert zero_filled.shape == (2, 2, 8, 6) and scale.shape == (2, 1)
    np.testing.assert_allclose(scale[:, 0].numpy(), np.abs(image).max(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(channel_magnitude(zero_filled).amax(dim=(-2, -1)).numpy(), 1.0, rtol=1e-5)
    torch.testing.assert_close(normalised_kspace * scale[:, :, None, None, None], kspace)


# -- synthetic phase ---------------------------------------------------------------------------------------------------
def test_synthetic_phase_is_smooth_seeded_slice_varying_and_spans_more_than_pi():
    first = synthetic_phase((40, 32), "mni", 3)
    assert np.array_equal(first, synthetic_phase((40, 32), "mni", 3))
    assert not np.allclose(first, synthetic_phase((40, 32), "mni", 4))
    for index in range(20):
        phase = synthetic_phase((40, 32), "volume", index)
        assert math.pi < np.ptp(phase) <= 2 * math.pi + 1e-9
        # smooth: a neighbouring pixel's phase differs by a small fraction of the span
        assert np.abs(np.diff(phase, axis=0)).max() < 0.5 and np.abs(np.diff(phase, axis=1)).max() < 0.5
    magnitude = smooth_image(40, 32)
    phased = with_synthetic_phase(magnitude, "mni", 3)
    np.testing.assert_allclose(np.abs(phased), magnitude, rtol=1e-6)
    np.testing.assert_allclose(np.angle(phased * np.exp(-1j * first)), 0, atol=1e-5)


# -- scored region -----------------------------------------------------------------------------------------------------
def test_centre_crop_takes_the_fastmri_centre_and_never_pads():
    grid = np.arange(6 * 9).reshape(6, 9)
    assert np.array_equal(centre_crop(grid, (6, 6)), grid[:, 1:7])  # centre pixel 4 → 3 (the fftshift convention)
    assert centre_crop(grid, (8, 8)).shape == (6, 8)
    assert torch.equal(centre_crop(torch.from_numpy(grid), (6, 6)), torch.from_numpy(grid[:, 1:7]))


def test_scored_image_is_the_real_image_for_one_channel_and_the_magnitude_for_two():
    real = torch.randn(2, 1, 6, 8)
    assert torch.equal(scored_image(real, None), real[:, 0])  # 1 channel: unchanged (negative values kept)
    complex_ = torch.randn(2, 2, 6, 8)
    torch.testing.assert_close(scored_image(complex_, (6, 6)), channel_magnitude(complex_)[:, 0, :, 1:7])


# -- the 2-channel dataset ---------------------------------------------------------------------------------------------
def magnitude_volume(path: Path, slices: int = 3, size: int = 24) -> Path:
    write_project_volume(path, np.stack([smooth_image(size, size, seed) for seed in range(slices)]))
    return path


def test_two_channel_items_keep_the_phase_and_agree_with_their_kspace(tmp_path):
    path = magnitude_volume(tmp_path / "v.h5")
    mask = make_mask("random", 4.0, (24, 24), seed=0)
    dataset = SliceDataset([open_volume(path, "project", keep_phase=True)], mask, 24, image_channels=2,
                           phase="synthetic")
    item = dataset[1]
    assert item.zero_filled.shape == item.target.shape == (2, 24, 24) and item.kspace.shape == (1, 24, 24, 2)
    target = torch.view_as_complex(item.target.movedim(0, -1).contiguous()).numpy() * item.scale.item()
    expected = with_synthetic_phase(smooth_image(24, 24, 1), "v", 1)
    np.testing.assert_allclose(target, expected, atol=1e-5)  # the phase travels with the target
    measured = torch.view_as_complex(item.kspace[0].contiguous()).numpy() * item.scale.item()
    np.testing.assert_allclose(measured, np.fft.fft2(expected, norm="ortho") * mask.values, atol=1e-5)
    assert channel_magnitude(item.zero_filled).max().item() == pytest.approx(1.0)


def test_one_channel_items_are_unchanged_by_the_complex_path(tmp_path):
    path = magnitude_volume(tmp_path / "v.h5")
    mask = make_mask("random", 4.0, (24, 24), seed=0)
    item = SliceDataset([open_volume(path, "project")], mask, 24)[0]
    zero_filled, _, scale = normalise_kspace(fft2(torch.view_as_real(
        torch.from_numpy(smooth_image(24, 24, 0)).to(torch.complex64))) * torch.from_numpy(mask.values)[..., None])
    assert item.zero_filled.shape == (1, 24, 24)
    torch.testing.assert_close(item.zero_filled[0], zero_filled)
    assert item.scale.item() == pytest.approx(scale.item())


def test_synthetic_phase_needs_two_channels_and_magnitude_images(tmp_path):
    config = apply_overrides(load_config("smoke"), {"data.phase": "synthetic"})
    with pytest.raises(InputError, match="--channels 2"):
        check_run(config, log=lambda _: None)
    path = tmp_path / "measured.h5"
    image = smooth_image(24, 24)
    write_project_volume(path, image[None], kspace=np.fft.fft2(image, norm="ortho")[None])
    data = apply_overrides(load_config("smoke"), {
        "data.source": "project", "data.train": str(path), "data.validation": str(path), "data.image_size": 24,
        "data.downsample": 1, "data.phase": "synthetic", "model.image_channels": 2}).data
    with pytest.raises(InputError, match="carries its own phase"):
        build_splits(data, 4.0, log=lambda _: None, image_channels=2)


# -- presets and keys --------------------------------------------------------------------------------------------------
def test_quick_complex_is_quick_with_two_channels_and_phase_at_its_committed_budget():
    quick, complex_ = load_config("quick").to_dict(), load_config("quick-complex").to_dict()
    assert complex_["model"].pop("image_channels") == 2 and quick["model"].pop("image_channels") == 1
    assert complex_["data"].pop("phase") == "synthetic" and quick["data"].pop("phase") == "none"
    assert complex_.pop("preset") == "quick-complex" and quick.pop("preset") == "quick"
    # The 40 epochs (LR step after 30) of TRAINING_CODE_VERSION 1, which made docs/results/quick-complex.
    budget = {"lr_step": 30, **{f"epochs_{stage}": 40 for stage in ("teacher", "student", "sft", "kd")}}
    assert {key: complex_["train"].pop(key) for key in budget} == budget
    for key in budget:
        quick["train"].pop(key)
    assert complex_ == quick


def test_image_channels_and_phase_enter_stage_keys_only_when_set():
    quick = plan_run(load_config("quick"))
    complex_ = plan_run(load_config("quick-complex"))
    real_keys = {stage.spec.key for stage in quick.stages[4.0]}
    complex_keys = {stage.spec.key for stage in complex_.stages[4.0]}
    assert not real_keys & complex_keys
    record = complex_.stages[4.0][0].spec
    assert record.determinants["model_options"]["image_channels"] == 2
    assert "image_channels" not in quick.stages[4.0][0].spec.determinants["model_options"]


# -- the five stages on phased data ------------------------------------------------------------------------------------
def test_smoke_run_with_two_channels_scores_magnitudes_and_keeps_the_complex_target(tmp_path):
    config = apply_overrides(load_config("smoke"), {"model.image_channels": 2, "data.phase": "synthetic"})
    check_run(config, log=lambda _: None)
    Pipeline(config, tmp_path, score=slice_metrics, log=lambda _: None, progress=False).run()
    results = load_json(tmp_path / "results.json")
    by_role = {m["role"]: m for m in results["models"] if m["split"] == "validation"}
    assert by_role["teacher"]["parameters"] == 144_650 and by_role["student"]["parameters"] == 52_170
    assert all(np.isfinite(m["psnr"]["mean"]) for m in results["models"])
    with h5py.File(tmp_path / by_role["sft_kd"]["reconstructions_file"]) as f:
        assert f["reconstruction"].shape == f["target"].shape == (4, 48, 48)
        assert f["target"].dtype == np.float32 and float(np.min(f["target"])) >= 0  # magnitudes
        complex_target = f[rundir.COMPLEX_TARGET_KEY][()]
    assert complex_target.dtype == np.complex64 and complex_target.shape == (4, 48, 48)
    np.testing.assert_allclose(np.abs(complex_target), h5py.File(
        tmp_path / by_role["sft_kd"]["reconstructions_file"])["target"][()], atol=1e-6)
    assert np.ptp(np.angle(complex_target[np.abs(complex_target) > 0.2])) > 1.0  # the phase is really there
    stage = load_json(tmp_path / by_role["sft_kd"]["stage_dir"] / "stage.json")
    assert stage["model_options"]["image_channels"] == 2


def fastmri_multicoil_file(path: Path, slices: int, seed: int) -> Path:
    """A fastMRI-like multi-coil file: ``kspace`` (S, 4, 96, 56) centred, the readout (rows) oversampled 2x, of a
    smooth complex image seen through four smooth complex coil maps; ``reconstruction_rss`` (S, 48, 48)."""
    rows, columns = 96, 56
    y, x = np.mgrid[0:rows, 0:columns] / np.array([rows, columns])[:, None, None]
    images, coils = [], []
    for index in range(slices):
        magnitude = np.zeros((rows, columns), np.float32)
        magnitude[24:72] = smooth_image(48, columns, seed * 10 + index)
        image = magnitude * np.exp(1j * (2.5 * x + 1.5 * y + index))
        maps = np.stack([np.exp(-((x - cx) ** 2 + (y - cy) ** 2)) * np.exp(1j * c)
                         for c, (cx, cy) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)])])
        coil_images = maps * image
        coils.append(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(coil_images, axes=(-2, -1)), norm="ortho"),
                                     axes=(-2, -1)))
        images.append(np.sqrt((np.abs(coil_images) ** 2).sum(0))[24:72, 4:52])
    with h5py.File(path, "w") as file:
        file["kspace"] = np.stack(coils).astype(np.complex64)
        file["reconstruction_rss"] = np.stack(images).astype(np.float32)
    return path


def test_multicoil_fastmri_trains_on_the_measured_grid_and_reports_the_coil_compression(tmp_path):
    train = fastmri_multicoil_file(tmp_path / "train.h5", 6, 0)
    validation = fastmri_multicoil_file(tmp_path / "validation.h5", 3, 1)
    config = apply_overrides(load_config("smoke"), {
        "data.source": "fastmri", "data.train": str(train), "data.validation": str(validation),
        "data.image_size": 48, "data.downsample": 1, "model.image_channels": 2, "model.student": ["d2c5"]})
    check_run(config, log=lambda _: None)
    assert plan_run(config).masks[4.0].shape == (48, 56)  # the DF's grid: readout cropped, phase encodes kept
    out = tmp_path / "run"
    Pipeline(config, out, score=slice_metrics, log=lambda _: None, progress=False).run()
    results = load_json(out / "results.json")
    coil = rundir.read_results(out).coil_compression
    assert coil.split == "validation" and coil.slices == 3 and 10 < coil.metrics["psnr"].mean < 100
    assert results["coil_compression"]["psnr"]["mean"] == coil.metrics["psnr"].mean
    teacher = next(m for m in results["models"] if m["role"] == "teacher")
    with h5py.File(out / teacher["reconstructions_file"]) as f:
        assert f["reconstruction"].shape == (3, 48, 48)  # scored: the centre of the 48 x 56 grid
        assert f[rundir.COMPLEX_TARGET_KEY].shape == (3, 48, 56)
