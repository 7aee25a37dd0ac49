"""MRI physics, written once: Fourier operators, undersampling, zero filling, the input normalisation, data
fidelity."""

from compressor.physics.data_fidelity import DataFidelity, data_fidelity, data_fidelity_kspace
from compressor.physics.fft import (
    FourierOperator,
    MatmulDFT,
    TorchFFT,
    complex_abs,
    dft_matrix,
    fft2,
    fft2c,
    fftshift2,
    ifft2,
    ifft2c,
    ifftshift2,
    real_to_pair,
)
from compressor.physics.normalisation import NormalisedInput, normalisation_scale, normalise_kspace
from compressor.physics.sampling import apply_mask, undersample, zero_filled

__all__ = [
    "DataFidelity",
    "FourierOperator",
    "MatmulDFT",
    "NormalisedInput",
    "TorchFFT",
    "apply_mask",
    "complex_abs",
    "data_fidelity",
    "data_fidelity_kspace",
    "dft_matrix",
    "fft2",
    "fft2c",
    "fftshift2",
    "ifft2",
    "ifft2c",
    "ifftshift2",
    "normalisation_scale",
    "normalise_kspace",
    "real_to_pair",
    "undersample",
    "zero_filled",
]
