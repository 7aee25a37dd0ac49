"""The multi-coil acquisition simulator (:mod:`compressor.data.coil_simulation`) against NumPy oracles, and its
training pair against the server's reading path.

Oracles: the sensitivities' RSS is 1; the noise scan has the covariance it was drawn with, and prewhitened noise has
the identity covariance (statistical tolerances stated per test); the virtual-coil target of a noise-free scan is the
combination by the first left singular vector of an independent ``np.linalg.svd``; and the slice written as an
ISMRMRD file and read by ``compress reconstruct --source ismrmrd``'s code gives the training pair's input.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from compressor.data.coil_simulation import (
    CoilSimulation,
    assemble,
    coil_sensitivities,
    read_pair,
    simulate_acquisition,
    simulate_pair,
    slice_rng,
)
from compressor.data.coils import masked_virtual_coil
from compressor.data.dataset import SliceDataset
from compressor.data.fastmri import FastMRIReader
from compressor.data.mrd_readout import Readout
from compressor.data.phase import with_synthetic_phase
from compressor.data.project_h5 import write_project_volume
from compressor.data.readers import ProjectH5Reader
from compressor.errors import InputError
from compressor.evaluate.run_data import data_notes
from compressor.export.exported_file import ExportMetadata
from compressor.export.scanner.input_formats import volume_kspace
from compressor.export.scanner.raw_input import read_raw_input
from compressor.masks import SamplingMask
from compressor.rundir import CoilCompressionRecord, MetricSummary
from tests.synthetic_scans import write_simulated_scan
from tests.test_complex_training import fastmri_multicoil_file

SHAPE = (24, 20)


def image(shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """A complex test slice: an off-centre ellipse of varying intensity with a smooth phase."""
    u = np.linspace(-1, 1, shape[0])[:, None]
    v = np.linspace(-1, 1, shape[1])[None, :]
    inside = ((u - 0.1) / 0.7) ** 2 + (v / 0.6) ** 2 < 1
    return with_synthetic_phase(inside * (1.0 + 0.5 * u + 0.3 * v ** 2), "test", 0)


def line_mask(shape: tuple[int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    """``(H, W)`` 0/1 uncentred: the centre lines and a random third of the rest."""
    lines = np.random.default_rng(seed).random(shape[1]) < 0.35
    lines[[0, 1, -1]] = True
    return np.broadcast_to(lines, shape).astype(np.float32)


def whitening_oracle(noise_scan: tuple[Readout, ...]) -> np.ndarray:
    """``L^{-1}`` of the noise scan's sample covariance ``Ψ = (1/M) Σ n n^H = L L^H``."""
    noise = np.concatenate([readout.data for readout in noise_scan], axis=1).astype(np.complex128)
    return np.linalg.inv(np.linalg.cholesky(noise @ noise.conj().T / noise.shape[1]))


@pytest.mark.parametrize("shape, coils", [((9, 14), 1), ((17, 11), 3), ((24, 20), 8), ((32, 32), 12)])
@pytest.mark.parametrize("ring_radius", [0.8, 1.6])
def test_sensitivities_have_rss_one(shape, coils, ring_radius) -> None:
    """RSS of the sensitivities is 1 at every pixel, also with conductors inside the image (ring 0.8)."""
    settings = CoilSimulation(coils=coils, ring_radius=ring_radius)
    maps = coil_sensitivities(shape, settings, np.random.default_rng(3))
    assert maps.shape == (coils, *shape) and np.isfinite(maps).all()
    np.testing.assert_allclose(np.sqrt(np.sum(np.abs(maps) ** 2, axis=0)), 1.0, atol=1e-12)


def test_sensitivities_are_a_line_current_field() -> None:
    """Before normalisation, coil c's field at displacement d from its wire is i (d_u + i d_v) / |d|^2: the ratio
    of two coils' maps is that of the fields, whose magnitudes go as 1/r (Biot–Savart)."""
    settings = CoilSimulation(coils=2, ring_radius=1.6)
    maps = coil_sensitivities(SHAPE, settings, np.random.default_rng(5))
    rng = np.random.default_rng(5)  # the same draws, in coil_sensitivities' order
    angles = rng.uniform(0, 2 * np.pi) + np.pi * np.arange(2) + rng.uniform(-0.5, 0.5, 2) * np.pi / 2
    radius = 1.6 * rng.uniform(0.9, 1.1)
    u, v = np.meshgrid(np.linspace(-1, 1, SHAPE[0]), np.linspace(-1, 1, SHAPE[1]), indexing="ij")
    distance = [np.hypot(u - radius * np.cos(a), v - radius * np.sin(a)) for a in angles]
    np.testing.assert_allclose(np.abs(maps[0] / maps[1]), distance[1] / distance[0], rtol=1e-10)


def test_noise_scan_has_the_drawn_covariance_and_prewhitening_makes_it_white() -> None:
    """With ``M`` = 64 x 48 = 3072 noise samples per coil the sample covariance's entries deviate from ``Ψ``'s by
    about ``1/sqrt(M)`` = 0.018 of the noise variance: tolerance 0.1 (5.5 of those). Prewhitened noise of the image
    readouts (an all-zero image, so the data are noise alone; 24 x 20 = 480 samples per coil after oversampling
    removal, deviation about 1/sqrt(480) + 1/sqrt(M) = 0.064): covariance within 0.3 of the identity."""
    settings = CoilSimulation(coils=6, snr_db=10.0, noise_correlation=0.6)
    acquisition = simulate_acquisition(np.zeros(SHAPE, np.complex64), settings, np.random.default_rng(11))
    psi = acquisition.covariance
    whitening = whitening_oracle(acquisition.noise_scan)
    variance = np.trace(psi).real / len(psi)
    assert np.max(np.abs(np.linalg.inv(whitening) @ np.linalg.inv(whitening).conj().T - psi)) < 0.1 * variance
    np.testing.assert_allclose(whitening @ psi @ whitening.conj().T, np.eye(6), atol=0.1)
    white = assemble(acquisition.geometry, acquisition.noise_scan + acquisition.noisy).reshape(6, -1)
    np.testing.assert_allclose(white @ white.conj().T / white.shape[1], np.eye(6), atol=0.3)
    assert not np.allclose(psi, np.diag(np.diag(psi)), atol=0.05 * variance)  # the coils' noise is correlated


def test_noise_free_target_is_the_svd_combination() -> None:
    """A noise-free scan, fully sampled: the target is ``u^H X`` of the prewhitened coil images ``X = W S x``
    (oversampling removal is exact for an image zero-padded along the readout), ``u`` the first left singular vector
    of ``np.linalg.svd(X)`` with its largest entry real and positive; its k-space is the target's FFT."""
    settings = CoilSimulation(coils=5, oversampling=2)
    acquisition = simulate_acquisition(image(), settings, np.random.default_rng(2))
    noise_free = dataclasses.replace(acquisition, noisy=acquisition.clean)
    pair = read_pair(noise_free, np.ones(SHAPE, np.float32))
    coil_images = np.einsum("ij,jhw->ihw", whitening_oracle(acquisition.noise_scan),
                            acquisition.sensitivities * image())
    left, _, _ = np.linalg.svd(coil_images.reshape(5, -1), full_matrices=False)
    u = left[:, 0] * np.exp(-1j * np.angle(left[np.argmax(np.abs(left[:, 0])), 0]))
    expected = np.einsum("c,chw->hw", u.conj(), coil_images)
    peak = np.abs(expected).max()
    np.testing.assert_allclose(pair.target, expected, atol=1e-5 * peak)
    np.testing.assert_allclose(pair.u, u, atol=1e-6)
    np.testing.assert_allclose(pair.rss, np.sqrt(np.sum(np.abs(coil_images) ** 2, axis=0)), atol=1e-5 * peak)
    np.testing.assert_allclose(pair.kspace, np.fft.fft2(expected, norm="ortho"), atol=1e-5 * peak)


def test_noisy_pair_shares_u_and_is_zero_outside_the_mask() -> None:
    """The input is u^H of the masked noisy k-space and the target is combined with the same u."""
    mask = line_mask()
    acquisition = simulate_acquisition(image(), CoilSimulation(coils=4, snr_db=15.0), np.random.default_rng(4))
    pair = read_pair(acquisition, mask)
    noisy = assemble(acquisition.geometry, acquisition.noise_scan + acquisition.noisy)
    np.testing.assert_allclose(pair.kspace, np.einsum("c,chw->hw", pair.u.conj(), noisy * mask), rtol=1e-5,
                               atol=1e-5 * np.abs(noisy).max())
    assert np.all(pair.kspace[mask == 0] == 0)
    clean = np.fft.ifft2(assemble(acquisition.geometry, acquisition.noise_scan + acquisition.clean), norm="ortho")
    np.testing.assert_allclose(pair.target, np.einsum("c,chw->hw", pair.u.conj(), clean), rtol=1e-5,
                               atol=1e-5 * np.abs(clean).max())


def test_slices_are_seeded_by_volume_slice_and_seed() -> None:
    mask = line_mask()
    settings = CoilSimulation(coils=3)
    first = simulate_pair(image(), mask, settings, "volume", 2)
    np.testing.assert_array_equal(first.kspace, simulate_pair(image(), mask, settings, "volume", 2).kspace)
    for other in (simulate_pair(image(), mask, settings, "volume", 3),
                  simulate_pair(image(), mask, dataclasses.replace(settings, seed=1), "volume", 2)):
        assert not np.allclose(first.u, other.u)


@pytest.mark.parametrize("only_the_mask_lines", [False, True])
def test_the_server_reading_path_gives_the_training_input(tmp_path, only_the_mask_lines) -> None:
    """The simulated slice sent as an ISMRMRD file (every line, or only the model's as a scanner running its
    sequence sends) through ``compress reconstruct --source ismrmrd``'s reading
    (:func:`~compressor.export.scanner.raw_input.read_raw_input`) gives the training pair's k-space."""
    mask = line_mask(seed=7)
    settings = CoilSimulation(coils=6, snr_db=18.0)
    acquisition = simulate_acquisition(image(), settings, slice_rng("volume", 5, 0))
    pair = read_pair(acquisition, mask)
    path = tmp_path / "scan.h5"
    write_simulated_scan(path, acquisition, mask.any(axis=0) if only_the_mask_lines else None)
    metadata = ExportMetadata(architecture="d3c5", parameters=0, image_size=SHAPE, acceleration=3.0, mask=mask,
                              mask_digest="", formulation="lines", line_axis=1, model_options={}, config_key=None,
                              tool_version="test", image_channels=2)
    served = read_raw_input(path, metadata, mask)
    assert served.scan.noise_readouts == 64
    np.testing.assert_array_equal(served.kspace[0], pair.kspace)
    np.testing.assert_array_equal(pair.kspace, simulate_pair(image(), mask, settings, "volume", 5).kspace)


def test_dataset_items_are_the_simulated_pairs(tmp_path) -> None:
    """A 2-channel :class:`SliceDataset` with coils trains on the pair: zero-filled input ``F^{-1}`` of the virtual
    coil's k-space and the noise-free target, both divided by the input's largest magnitude."""
    magnitude = np.abs(image())[None].repeat(2, axis=0).astype(np.float32)
    reader = ProjectH5Reader(write_project_volume(tmp_path / "v.h5", magnitude), keep_phase=True)
    mask = SamplingMask(line_mask(), kind="test", acceleration=3.0)
    settings = CoilSimulation(coils=4)
    dataset = SliceDataset([reader], mask, SHAPE, image_channels=2, phase="synthetic", coils=settings)
    item = dataset[1]
    pair = simulate_pair(with_synthetic_phase(magnitude[1], reader.name, 1), mask.values, settings, reader.name, 1)
    zero_filled = np.fft.ifft2(pair.kspace, norm="ortho")
    scale = np.abs(zero_filled).max()
    np.testing.assert_allclose(item.zero_filled.numpy(), np.stack([zero_filled.real, zero_filled.imag]) / scale,
                               atol=1e-5)
    np.testing.assert_allclose(torch.complex(*item.target).numpy(), pair.target / scale, atol=1e-5)
    # The raw scan the item was read from (what a raw file of it holds) is the dataset's to give.
    np.testing.assert_array_equal(read_pair(dataset.simulated_scan(1), mask.values).kspace, pair.kspace)
    virtual, rss = dataset.coil_references()
    assert virtual.shape == rss.shape == (2, *SHAPE) and rss.max() == pytest.approx(1.0)
    with pytest.raises(InputError, match="simulated coils need 2-channel"):
        SliceDataset([reader], mask, SHAPE, image_channels=1, coils=settings)


def test_fastmri_multicoil_trains_and_reconstructs_through_the_served_virtual_coil(tmp_path) -> None:
    """Real coils (fastMRI multi-coil) go the same way: the dataset's input and ``compress reconstruct``'s graph
    input are ``masked_virtual_coil`` of the coil k-space, the target the coil images combined with that ``u``."""
    path = fastmri_multicoil_file(tmp_path / "multicoil.h5", 2, 0)
    reader = FastMRIReader(path, keep_phase=True)
    mask = SamplingMask(line_mask(reader.image_shape), kind="test", acceleration=3.0)
    data = reader.read_slice(1)
    coil_images = np.fft.ifft2(data.coil_kspace, norm="ortho")
    np.testing.assert_allclose(np.sqrt(np.sum(np.abs(coil_images) ** 2, axis=0)), data.rss, atol=1e-5 * data.rss.max())
    kspace, u = masked_virtual_coil(data.coil_kspace, mask.values)
    item = SliceDataset([reader], mask, 48, image_channels=2)[1]
    zero_filled = np.fft.ifft2(kspace, norm="ortho")
    scale = np.abs(zero_filled).max()
    np.testing.assert_allclose(torch.complex(*item.zero_filled).numpy(), zero_filled / scale, atol=1e-5)
    np.testing.assert_allclose(torch.complex(*item.target).numpy(), np.einsum("c,chw->hw", u.conj(), coil_images)
                               / scale, atol=1e-5)
    served, measured = volume_kspace([reader.read_slice(i) for i in range(2)], mask.values)
    assert measured
    np.testing.assert_array_equal(served[1], kspace)


def test_tables_say_the_data_was_simulated_coils() -> None:
    coil_compression = CoilCompressionRecord("validation", 21, {"psnr": MetricSummary(38.02, 1.0),
                                                                "ssim": MetricSummary(0.991, 0.01)})
    simulated, cost = data_notes({"data": {"coils": 8, "snr": 20.0, "coil_seed": 0}}, coil_compression)
    assert "simulated coils: 8 (Biot–Savart wires, ring 1.6, seed 0), SNR 20 dB" in simulated
    assert "virtual coil's zero-filled image" in simulated
    assert cost.endswith("21 validation slices: PSNR 38.02, SSIM 0.991.")
    assert data_notes({"data": {"coils": None}}, None) == ()
