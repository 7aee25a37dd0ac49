r"""What an exported model takes from any scanner input (:class:`ScannerInput`), what it asks of one
(:class:`InputRequest`), and the checks every input passes before anything is written.

The mask is ``--mask`` when given, else the training mask recorded in the model (:func:`choose_mask`); it must suit
the graph and the model's acceleration (:func:`check_mask`). Measured k-space must be zero outside the mask and
non-zero somewhere on every sampled position, else it was undersampled with another, or sparser, mask
(:func:`check_sampling`). Every problem is an :class:`~compressor.errors.InputError` naming the file.

Complex-valued images and 1-channel models: those models are real-valued (the DF keeps ``Re``), so k-space measured
from an image with a phase cannot be reconstructed faithfully by them. A real image has Hermitian k-space,
``y(-k) = conj(y(k))``; on the frequencies sampled together with their mirror (``M(k) M(-k) = 1``) the zero-filled
image is then exactly real. :func:`imaginary_energy_fraction` measures ``||Im x_s||^2 / ||x_s||^2`` for
``x_s = F^{-1}(M(k) M(-k) y)`` over the whole input; above :data:`COMPLEX_IMAGE_THRESHOLD` (1 %) the input is refused
unless the caller asks to take the real part, which is what the paper's pipeline does (the graph keeps ``Re`` of every
inverse transform). A 2-channel model reconstructs the complex image and needs no such check (:func:`check_phase`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from compressor.data.coils import virtual_coil
from compressor.errors import InputError
from compressor.masks import is_whole_lines, load_mask

if TYPE_CHECKING:
    from compressor.data.ismrmrd_file import RawScan
    from compressor.export.exported_file import ExportMetadata

COMPLEX_IMAGE_THRESHOLD = 0.01
ACCELERATION_TOLERANCE = 0.1
MULTI_COIL_MESSAGE = "multi-coil data needs a 2-channel model: coil compression gives a complex virtual coil"


@dataclass(frozen=True)
class ScannerInput:
    """Undersampled k-space ready for the graph.

    Attributes:
        kspace: ``(S, H, W)`` complex64, uncentred, zero outside ``mask``.
        mask: ``(H, W)`` float32 0/1, uncentred.
        measured: ``True`` when the k-space came from the file (``npy``, stored k-space, a raw scan), ``False`` when
            it was simulated from images.
        notes: what the user should know about the input (acquisitions set aside, lines zeroed).
        scan: the assembled raw scan the k-space came from (raw formats): its acquisitions head the ISMRMRD images
            of the reconstructions (:func:`~compressor.export.scanner.ismrmrd_images.scan_images`).
    """

    kspace: np.ndarray
    mask: np.ndarray
    measured: bool
    notes: tuple[str, ...] = ()
    scan: RawScan | None = None


@dataclass(frozen=True)
class InputRequest:
    """What the model takes, for a format to read an input into.

    Attributes:
        image_size: ``(H, W)`` of the model (slices are never cropped: k-space cannot be).
        mask: ``(H, W)`` 0/1 uncentred mask that undersamples (or undersampled) the data.
        image_channels: the model's (1 real, 2 complex): 2 reads phase (``keep_phase``) and compresses multi-coil
            data to one virtual coil; 1 refuses multi-coil data.
        acceleration: the model's (the ``authors`` source reads its ``kspace_volus_<R>x``); ``None`` if unknown.
        kspace_centred: whether ``.npy`` k-space has DC at ``(H//2, W//2)``.
        metadata: the exported model, for raw scans (its DF formulation decides partial readouts); ``None`` before
            export (validation data).
    """

    image_size: tuple[int, int]
    mask: np.ndarray
    image_channels: int = 1
    acceleration: float | None = None
    kspace_centred: bool = False
    metadata: ExportMetadata | None = None

    @classmethod
    def for_model(cls, metadata: ExportMetadata, mask: np.ndarray, kspace_centred: bool = False) -> InputRequest:
        """The request of an exported model reading with ``mask``."""
        return cls(tuple(metadata.image_size), mask, metadata.image_channels, metadata.acceleration, kspace_centred,
                   metadata)


def mirror(values: np.ndarray) -> np.ndarray:
    """``a(-k)`` for uncentred arrays over the last two axes: index ``k -> (-k) mod N`` on each."""
    return np.roll(np.flip(values, axis=(-2, -1)), shift=(1, 1), axis=(-2, -1))


def imaginary_energy_fraction(kspace: np.ndarray, mask: np.ndarray) -> float:
    """``||Im x_s||^2 / ||x_s||^2`` with ``x_s = F^{-1}(M(k) M(-k) y)`` over all slices (0 for real images).

    Args:
        kspace: ``(S, H, W)`` complex, uncentred, undersampled with ``mask``.
        mask: ``(H, W)`` 0/1, uncentred.
    """
    symmetric = mask * mirror(mask)
    image = np.fft.ifft2(kspace * symmetric, norm="ortho")
    total = float(np.sum(np.abs(image) ** 2))
    return float(np.sum(image.imag ** 2)) / total if total > 0 else 0.0


def check_phase(kspace: np.ndarray, mask: np.ndarray, image_channels: int, take_real_part: bool,
                source: Path | str) -> tuple[float, bool]:
    """The input's :func:`imaginary_energy_fraction` and whether a 1-channel model takes the real part of a
    complex-valued image (above :data:`COMPLEX_IMAGE_THRESHOLD`), which it does only if ``take_real_part``, else
    :class:`InputError`; a 2-channel model takes any image.

    Args:
        kspace: ``(S, H, W)`` complex, uncentred, undersampled with ``mask`` ``(H, W)``.
    """
    fraction = imaginary_energy_fraction(kspace, mask)
    takes_real_part = fraction > COMPLEX_IMAGE_THRESHOLD and image_channels != 2
    if takes_real_part and not take_real_part:
        raise InputError(f"k-space is of a complex-valued image ({fraction:.1%} of the energy is imaginary, "
                         f"threshold {COMPLEX_IMAGE_THRESHOLD:.0%}); the real-valued model cannot reconstruct it "
                         "faithfully (pass --take-real-part to reconstruct the real part)", source)
    return fraction, takes_real_part


def compress_coils(kspace: np.ndarray) -> np.ndarray:
    """One virtual coil per slice: multi-coil k-space ``(S, coils, H, W)`` -> ``(S, H, W)`` complex64.

    :func:`~compressor.data.coils.virtual_coil` is applied to each slice's k-space directly: the Fourier transform is
    unitary along the pixels, so the coil k-space matrix has the coil images' left singular vectors (the same
    compression vector) and compressing commutes with the transform; samples outside the mask stay exactly zero.
    """
    return np.stack([virtual_coil(coils) for coils in kspace])


def check_finite(kspace: np.ndarray, path: Path) -> None:
    """Refuse k-space ``(S, ...)`` with NaN or Inf, naming the file and the first such slice."""
    finite = np.isfinite(kspace).reshape(len(kspace), -1).all(axis=1)
    if not finite.all():
        raise InputError(f"k-space of slice {int(np.argmin(finite))} contains NaN or Inf", path)


def choose_mask(metadata: ExportMetadata, mask_path: Path | None, mask_centred: bool) -> np.ndarray:
    """The mask to use: ``mask_path`` (validated to fit the model's image size) or the model's training mask."""
    if mask_path is None:
        return metadata.mask
    return load_mask(mask_path, metadata.image_size, centred=mask_centred).values


def check_mask(mask: np.ndarray, metadata: ExportMetadata, source: Path | str) -> None:
    """The mask must suit the graph (whole lines for ``"lines"``) and the model's acceleration (±10 %)."""
    if metadata.formulation == "lines" and not is_whole_lines(mask, metadata.line_axis):
        direction = "columns" if metadata.line_axis == -1 else "rows"
        raise InputError(f"mask is not made of whole {direction}, which this model's data-fidelity graph needs",
                         source)
    if metadata.acceleration:
        acceleration = mask.size / max(float(mask.sum()), 1.0)
        if abs(acceleration - metadata.acceleration) > ACCELERATION_TOLERANCE * metadata.acceleration:
            raise InputError(f"mask samples 1/{acceleration:.2f} of k-space but the model was trained for "
                             f"{metadata.acceleration:g}x", source)


def size_message(shape: tuple[int, ...], image_size: tuple[int, int]) -> str:
    """Why slices of ``shape`` ``(H, W)`` do not fit a model of ``image_size``."""
    return (f"slices are {shape[0]}x{shape[1]} but the model was exported for {image_size[0]}x{image_size[1]} "
            "images")


def check_sampling(kspace: np.ndarray, request: InputRequest, path: Path, measured: bool) -> ScannerInput:
    """``kspace`` ``(S, H, W)`` as the model's input, once it is known to fit: slices of the model's image size, zero
    outside the mask, and not zero everywhere on a sampled position while non-zero elsewhere (a sparser mask)."""
    mask = request.mask
    if kspace.shape[1:] != tuple(request.image_size):
        raise InputError(size_message(kspace.shape[1:], request.image_size), path)
    if np.any(kspace[:, mask == 0] != 0):
        raise InputError("k-space has samples where the mask has none: it was undersampled with another mask or "
                         "centring (see --mask, --mask-centred, --centred)", path)
    never_measured = np.all(kspace[:, mask != 0] == 0, axis=0)
    if never_measured.any() and np.any(kspace != 0):
        raise InputError(f"k-space is exactly zero in every slice at {int(never_measured.sum())} of the mask's "
                         f"{never_measured.size} samples: it was undersampled with a sparser mask (another "
                         "acceleration? see --mask)", path)
    return ScannerInput(kspace, mask, measured)
