"""Image transforms used by the readers, the dataset and the scored region of training and evaluation."""

from __future__ import annotations

import numpy as np
import torch

from compressor.physics.fft import channel_magnitude


def _axis_crop_or_pad(length: int, size: int) -> tuple[slice, tuple[int, int]]:
    """The slice of the input to keep and the ``(before, after)`` zero padding to add along one axis.

    The centre pixel ``length // 2`` of the input lands on ``size // 2`` of the output (the ``fftshift``
    convention), so cropping and padding are inverses of each other wherever no data is cut away.
    """
    if size <= length:
        start = length // 2 - size // 2
        return slice(start, start + size), (0, 0)
    before = size // 2 - length // 2
    return slice(0, length), (before, size - length - before)


def centre_crop_or_pad(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre-crop or zero-pad the last two axes of ``image`` ``(..., H, W)`` to ``size = (H', W')``.

    Each axis is cropped when it is longer than the requested size and zero-padded when it is shorter. The
    centre pixel is ``(H // 2, W // 2)`` (for even sizes, the lower-right of the four middle pixels) and it
    moves to ``(H' // 2, W' // 2)``. For example a length-5 axis cropped to 2 keeps indices 1 and 2; a length-2
    axis padded to 5 puts its values at indices 1 and 2. Returns a new array; ``image`` is not modified.
    """
    rows, row_pad = _axis_crop_or_pad(image.shape[-2], size[0])
    cols, col_pad = _axis_crop_or_pad(image.shape[-1], size[1])
    cropped = image[..., rows, cols]
    padding = [(0, 0)] * (image.ndim - 2) + [row_pad, col_pad]
    return np.pad(cropped, padding)


def centre_crop(image, size: tuple[int, int]):
    """The centre ``size = (H', W')`` of the last two axes of ``image`` ``(..., H, W)``; an axis already no longer
    than requested is kept whole (never padded). Works on NumPy arrays and torch tensors alike (a view, no copy);
    same centre convention as :func:`centre_crop_or_pad`.

    Used for the *scored region*: a source with measured k-space keeps the grid its phase-encode lines were measured
    on (fastMRI knee: 320 x 368 after the readout oversampling is removed), and losses and metrics take the
    ``image_size`` centre of it (320 x 320), as fastMRI's reconstructions do.
    """
    rows, _ = _axis_crop_or_pad(image.shape[-2], min(size[0], image.shape[-2]))
    cols, _ = _axis_crop_or_pad(image.shape[-1], min(size[1], image.shape[-1]))
    return image[..., rows, cols]


def scored_image(image: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """What evaluation and metrics score of a model's image ``(B, C, H, W) -> (B, H', W')``: the real image
    itself for ``C = 1`` (the paper's convention, unchanged), the magnitude ``|x|`` for ``C = 2`` (PSNR and SSIM of
    magnitudes, as fastMRI), cropped to the centre ``size`` (:func:`centre_crop`; ``None`` keeps the grid)."""
    scored = image[:, 0] if image.shape[1] == 1 else channel_magnitude(image)[:, 0]
    return scored if size is None else centre_crop(scored, size)
