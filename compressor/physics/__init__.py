"""MRI physics, written once: Fourier operators, undersampling, zero filling, the input normalisation, data
fidelity (on k-space, and in image space for whole-line masks)."""

from compressor.physics.data_fidelity import DataFidelity, data_fidelity, data_fidelity_kspace
from compressor.physics.fft import (
    IMAGE_CHANNELS,
    FourierOperator,
    MatmulDFT,
    TorchFFT,
    channel_magnitude,
    channels_to_pair,
    complex_abs,
    dft_matrix,
    fft2,
    fft2c,
    fftshift2,
    ifft2,
    ifft2c,
    ifftshift2,
    pair_to_channels,
    real_to_pair,
)
from compressor.physics.line_projection import LineProjection, line_data_fidelity, line_projection, project_lines
from compressor.physics.normalisation import NormalisedInput, normalisation_scale, normalise_kspace
from compressor.physics.sampling import apply_mask, undersample, zero_filled

__all__ = [
    "IMAGE_CHANNELS",
    "DataFidelity",
    "FourierOperator",
    "LineProjection",
    "MatmulDFT",
    "NormalisedInput",
    "TorchFFT",
    "apply_mask",
    "channel_magnitude",
    "channels_to_pair",
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
    "line_data_fidelity",
    "line_projection",
    "normalisation_scale",
    "normalise_kspace",
    "pair_to_channels",
    "project_lines",
    "real_to_pair",
    "undersample",
    "zero_filled",
]
