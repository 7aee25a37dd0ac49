"""The MRI physics: FFT conventions against NumPy, the forward model, the input normalisation, and the data-fidelity
layer of eq. (2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compressor.masks import make_mask
from compressor.physics import (
    DataFidelity,
    MatmulDFT,
    TorchFFT,
    data_fidelity,
    data_fidelity_kspace,
    fft2,
    fft2c,
    ifft2,
    ifft2c,
    normalise_kspace,
    real_to_pair,
    undersample,
    zero_filled,
)
from compressor.physics.normalisation import EPSILON


def to_pair(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack([array.real, array.imag], axis=-1))


def to_complex(pair: torch.Tensor) -> np.ndarray:
    return pair[..., 0].numpy() + 1j * pair[..., 1].numpy()


SHAPES = [(3, 3), (4, 6), (10, 8), (2, 7, 5)]


@pytest.mark.parametrize("shape", SHAPES)
def test_uncentred_fft_matches_numpy_ortho(shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    np.testing.assert_allclose(to_complex(fft2(to_pair(x))), np.fft.fft2(x, norm="ortho"), atol=1e-10)
    np.testing.assert_allclose(to_complex(ifft2(to_pair(x))), np.fft.ifft2(x, norm="ortho"), atol=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
def test_centred_fft_matches_numpy_oracle(shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    axes = (-2, -1)
    oracle = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=axes), norm="ortho"), axes=axes)
    np.testing.assert_allclose(to_complex(fft2c(to_pair(x))), oracle, atol=1e-10)
    inverse = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(x, axes=axes), norm="ortho"), axes=axes)
    np.testing.assert_allclose(to_complex(ifft2c(to_pair(x))), inverse, atol=1e-10)


def test_fft_is_orthonormal_and_round_trips():
    x = torch.randn(2, 1, 12, 10, 2, dtype=torch.float64)
    k = fft2(x)
    assert torch.allclose(k.pow(2).sum(), x.pow(2).sum())  # Parseval with norm="ortho"
    assert torch.allclose(ifft2(k), x, atol=1e-12)
    assert torch.allclose(ifft2c(fft2c(x)), x, atol=1e-12)


def test_dc_coefficient_sits_at_origin_uncentred_and_at_centre_centred():
    image = real_to_pair(torch.ones(6, 8, dtype=torch.float64))
    assert fft2(image)[0, 0, 0].item() == pytest.approx(np.sqrt(48))
    assert fft2c(image)[3, 4, 0].item() == pytest.approx(np.sqrt(48))


@pytest.mark.parametrize("size", [(16, 16), (15, 12), (240, 240)])
def test_matmul_dft_equals_torch_fft(size):
    x = torch.randn(2, 1, *size, 2)
    operator = MatmulDFT(*size)
    assert torch.allclose(operator.forward(x), fft2(x), atol=2e-5)
    assert torch.allclose(operator.backward(x), ifft2(x), atol=2e-5)


def test_undersampling_zeroes_unsampled_lines_and_zero_filled_is_real_part():
    image = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    mask = torch.from_numpy(make_mask("random", 4, (16, 16), seed=3).values).double()[None, None]
    kspace = undersample(image, mask)
    unsampled = mask[0, 0] == 0
    assert torch.all(kspace[0, 0][unsampled] == 0)
    expected = np.real(np.fft.ifft2(np.fft.fft2(image[0, 0].numpy(), norm="ortho") * mask[0, 0].numpy(), norm="ortho"))
    np.testing.assert_allclose(zero_filled(kspace)[0, 0].numpy(), expected, atol=1e-12)


def _random_problem(size=(16, 16), seed=0, symmetric=False):
    torch.manual_seed(seed)
    target = torch.rand(2, 1, *size, dtype=torch.float64)
    mask_values = make_mask("random", 4, size, seed=seed).values.astype(np.float64)
    if symmetric:  # make the line pattern conjugate-symmetric: k and -k (mod N) sampled together
        mask_values = np.maximum(mask_values, np.roll(mask_values[:, ::-1], 1, axis=1))
    mask = torch.from_numpy(mask_values)[None, None]
    return target, mask, undersample(target, mask)


def test_df_complex_result_is_idempotent_and_keeps_measured_lines():
    _, mask, kspace = _random_problem()
    cnn_output = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    fourier = TorchFFT()
    corrected = data_fidelity_kspace(cnn_output, kspace, mask, fourier)
    sampled = mask[0, 0].bool()
    assert torch.allclose(corrected[:, 0][:, sampled], kspace[:, 0][:, sampled])
    # Idempotence on the complex image: applying DF to its own (complex) result changes nothing.
    complex_image = ifft2(corrected)
    again = fft2(complex_image) + mask.unsqueeze(-1) * (kspace - fft2(complex_image))
    assert torch.allclose(again, corrected, atol=1e-12)
    # Away from the samples the CNN's k-space is kept.
    assert torch.allclose(corrected[:, 0][:, ~sampled], fft2(real_to_pair(cnn_output))[:, 0][:, ~sampled])


def test_df_real_output_keeps_lines_for_conjugate_symmetric_mask():
    _, mask, kspace = _random_problem(symmetric=True)
    cnn_output = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    fourier = TorchFFT()
    image = data_fidelity(cnn_output, kspace, mask, fourier)
    sampled = mask[0, 0].bool()
    assert torch.allclose(fft2(real_to_pair(image))[:, 0][:, sampled], kspace[:, 0][:, sampled], atol=1e-12)
    assert torch.allclose(data_fidelity(image, kspace, mask, fourier), image, atol=1e-12)  # idempotent


def test_df_with_full_mask_returns_fully_sampled_image():
    target = torch.rand(1, 1, 12, 12, dtype=torch.float64)
    mask = torch.ones(1, 1, 12, 12, dtype=torch.float64)
    kspace = undersample(target, mask)
    image = data_fidelity(torch.randn_like(target), kspace, mask, TorchFFT())
    assert torch.allclose(image, target, atol=1e-12)


def test_finite_lambda_blends_measurement_and_prediction():
    _, mask, kspace = _random_problem()
    cnn_output = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    lam = torch.tensor(3.0, dtype=torch.float64)
    corrected = data_fidelity_kspace(cnn_output, kspace, mask, TorchFFT(), lam)
    predicted = fft2(real_to_pair(cnn_output))
    sampled = mask[0, 0].bool()
    expected = (predicted + lam * kspace) / (1 + lam)
    assert torch.allclose(corrected[:, 0][:, sampled], expected[:, 0][:, sampled])
    assert torch.allclose(corrected[:, 0][:, ~sampled], predicted[:, 0][:, ~sampled])


def test_df_layer_parameters_only_when_learnable():
    assert sum(p.numel() for p in DataFidelity().parameters()) == 0
    assert sum(p.numel() for p in DataFidelity(2.0).parameters()) == 0
    learnable = DataFidelity(2.0, learnable=True)
    assert sum(p.numel() for p in learnable.parameters()) == 1
    assert learnable.dc_weight.item() == pytest.approx(2.0)
    with pytest.raises(ValueError):
        DataFidelity(None, learnable=True)


def test_df_is_differentiable_through_the_cnn_output():
    _, mask, kspace = _random_problem()
    cnn_output = torch.randn(2, 1, 16, 16, dtype=torch.float64, requires_grad=True)
    data_fidelity(cnn_output, kspace, mask, TorchFFT()).sum().backward()
    assert cnn_output.grad is not None and torch.isfinite(cnn_output.grad).all()


# --- the one normalisation ---------------------------------------------------------------------------------------

def numpy_normalisation(kspace: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The oracle: ``x_u = Re ifft2(y, ortho)``, ``s = max |x_u|`` per slice, and ``(x_u / s, y / s, s)``."""
    image = np.fft.ifft2(kspace, norm="ortho").real
    scale = np.maximum(np.abs(image).max(axis=(-2, -1)), EPSILON)
    return image / scale[..., None, None], kspace / scale[..., None, None], scale


@pytest.mark.parametrize("shape", SHAPES)
def test_normalisation_is_one_function_whatever_the_fourier_operator(shape):
    """TorchFFT (training) and MatmulDFT (the exported graph) give the NumPy oracle's result to float32 rounding."""
    rng = np.random.default_rng(2)
    kspace = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) * 37.0  # any units
    expected_image, expected_kspace, expected_scale = numpy_normalisation(kspace)
    pair = to_pair(kspace).float()
    for fourier in (None, TorchFFT(), MatmulDFT(*shape[-2:])):
        image, normalised_kspace, scale = normalise_kspace(pair, fourier)
        assert image.shape == shape and normalised_kspace.shape == (*shape, 2) and scale.shape == shape[:-2]
        np.testing.assert_allclose(image.numpy(), expected_image, atol=1e-5)
        np.testing.assert_allclose(to_complex(normalised_kspace), expected_kspace, atol=1e-5)
        np.testing.assert_allclose(scale.numpy(), expected_scale, rtol=1e-5)
        assert np.allclose(np.abs(image.numpy()).max(axis=(-2, -1)), 1.0)  # x_u / s lies in [-1, 1], max |.| = 1


def test_normalisation_defaults_to_the_training_operator_bit_for_bit():
    kspace = torch.randn(3, 1, 12, 10, 2)
    default, explicit = normalise_kspace(kspace), normalise_kspace(kspace, TorchFFT())
    assert all(torch.equal(a, b) for a, b in zip(default, explicit))


def test_normalisation_of_empty_kspace_stays_finite():
    image, kspace, scale = normalise_kspace(torch.zeros(2, 6, 4, 2))
    assert torch.all(scale == EPSILON) and torch.all(image == 0) and torch.all(kspace == 0)
