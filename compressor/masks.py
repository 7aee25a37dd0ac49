"""Cartesian undersampling masks.

Convention: a :class:`SamplingMask` always holds its values **uncentred** (DC at index ``(0, 0)``), the
project's internal k-space convention (see :mod:`compressor.physics.fft`). Mask generators build the pattern
in centred index space, where "low frequencies in the middle" is easy to write, and convert once with
``ifftshift``. A mask read from a file must say which convention it is in (``centred=`` has no default), and a
mask that samples DC only under the other convention is rejected, so the two cannot be mixed silently.

Masks are made of whole phase-encode lines along the last axis (``W``): column ``j`` is either fully sampled
or not, like fastMRI's and the authors' masks. The paper uses one fixed mask per acceleration for all slices.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compressor.errors import ConventionError, InputError
from compressor.registry import Registry

LINE_AXES = (-1, -2)
"""The axes a whole-line mask can vary along, in order of preference: ``-1`` (``W``) first, as this tool's masks."""


def is_whole_lines(values: np.ndarray, axis: int) -> bool:
    """Whether a 2-D ``(H, W)`` mask is made of whole lines that vary along ``axis``.

    ``axis=-1``: every row is the same, so whole columns are sampled and the sampled line index runs along ``W``
    (the phase-encode axis of this tool's masks); ``axis=-2``: every column is the same (whole rows). A constant
    mask (all ones or all zeros) is whole lines along both.
    """
    if axis == -1:
        return bool(np.all(values == values[:1, :]))
    if axis == -2:
        return bool(np.all(values == values[:, :1]))
    raise ValueError(f"line axis must be -1 or -2, got {axis}")


def line_axis(values: np.ndarray) -> int | None:
    """The first axis of :data:`LINE_AXES` along which the ``(H, W)`` mask is whole lines (:func:`is_whole_lines`),
    or ``None`` for a mask that is not made of whole lines. The one place the line axis is found: masks, export
    (its ``"lines"`` data-fidelity graph) and ``compress reconstruct`` use it."""
    return next((axis for axis in LINE_AXES if is_whole_lines(values, axis)), None)


def acceleration_label(acceleration: float) -> str:
    """``4.0 -> "4"``, ``2.5 -> "2.5"``: the acceleration as written in file names and HDF5 keys."""
    acceleration = float(acceleration)
    return str(int(acceleration)) if acceleration.is_integer() else str(acceleration)


@dataclass(frozen=True)
class SamplingMask:
    """A 2-D 0/1 sampling mask, uncentred (DC at ``(0, 0)``), float32 ``(H, W)``."""

    values: np.ndarray
    kind: str = "custom"
    acceleration: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.values.ndim != 2:
            raise ValueError(f"mask must be 2-D (H, W), got shape {self.values.shape}")

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.values.shape[0]), int(self.values.shape[1]))

    @property
    def sampled_fraction(self) -> float:
        return float(self.values.mean())

    @property
    def effective_acceleration(self) -> float:
        return 1.0 / self.sampled_fraction

    @property
    def phase_encode_axis(self) -> int | None:
        """The mask's :func:`line_axis`: ``-1`` whole columns, ``-2`` whole rows, ``None`` otherwise."""
        return line_axis(self.values)

    def centred(self) -> np.ndarray:
        """The mask with DC moved to ``(H // 2, W // 2)`` (for display and centred k-space)."""
        return np.fft.fftshift(self.values)

    def digest(self) -> str:
        """SHA-256 of the uncentred float32 values and shape: identifies the mask in caches and ONNX metadata."""
        data = np.ascontiguousarray(self.values, dtype=np.float32)
        return hashlib.sha256(str(data.shape).encode() + data.tobytes()).hexdigest()[:16]


def _centre_band(width: int, n_centre: int) -> np.ndarray:
    """Indices (centred coordinates) of the ``n_centre`` lines around ``width // 2``."""
    start = width // 2 - n_centre // 2
    return np.arange(start, start + n_centre)


def _lines_to_mask(centred_lines: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    height, width = shape
    line = np.zeros(width, dtype=np.float32)
    line[centred_lines] = 1.0
    return np.broadcast_to(np.fft.ifftshift(line)[None, :], (height, width)).copy()


class MaskFunc(ABC):
    """Base of the mask generators: subclass and override :meth:`choose_lines`.

    Args:
        acceleration: ``R``; the mask samples exactly ``round(W / R)`` lines.
        center_fraction: fraction of ``W`` sampled fully around DC; default ``0.32 / R`` (fastMRI's 0.08 at 4x,
            0.04 at 8x).
    """

    kind = "base"

    def __init__(self, acceleration: float, center_fraction: float | None = None):
        if acceleration < 1:
            raise InputError(f"acceleration must be >= 1, got {acceleration}")
        self.acceleration = float(acceleration)
        self.center_fraction = 0.32 / self.acceleration if center_fraction is None else float(center_fraction)

    def line_counts(self, width: int) -> tuple[int, int]:
        """``(total lines, centre lines)`` for a phase-encode axis of ``width`` lines."""
        total = max(1, round(width / self.acceleration))
        centre = min(total, max(1, round(width * self.center_fraction)))
        return total, centre

    @abstractmethod
    def choose_lines(self, width: int, rng: np.random.Generator) -> np.ndarray:
        """Indices of the sampled lines in centred coordinates (DC at ``width // 2``)."""

    def __call__(self, shape: tuple[int, int], seed: int = 0) -> SamplingMask:
        """A mask of ``shape = (H, W)``, deterministic for a given ``seed``."""
        rng = np.random.default_rng(seed)
        lines = self.choose_lines(shape[1], rng)
        return SamplingMask(_lines_to_mask(lines, shape), kind=self.kind, acceleration=self.acceleration, seed=seed)


MASKS: Registry[type[MaskFunc]] = Registry("mask type")


@MASKS.register("random")
class VariableDensityMask(MaskFunc):
    """Variable-density random lines: a fully sampled centre band, the other lines drawn without replacement
    with probability decaying polynomially with distance from DC, ``p(k) ∝ (1 - |k| / k_max)^decay``."""

    kind = "random"

    def __init__(self, acceleration: float, center_fraction: float | None = None, decay: float = 2.0):
        super().__init__(acceleration, center_fraction)
        self.decay = decay

    def choose_lines(self, width: int, rng: np.random.Generator) -> np.ndarray:
        total, n_centre = self.line_counts(width)
        centre = _centre_band(width, n_centre)
        outside = np.setdiff1d(np.arange(width), centre)
        distance = np.abs(outside - width // 2) / (width / 2)
        weight = np.clip(1.0 - distance, 1e-3, None) ** self.decay
        chosen = rng.choice(outside, size=total - n_centre, replace=False, p=weight / weight.sum())
        return np.concatenate([centre, chosen])


@MASKS.register("equispaced")
class EquispacedMask(MaskFunc):
    """A fully sampled centre band plus lines evenly spaced over the rest of k-space (the seed is unused)."""

    kind = "equispaced"

    def choose_lines(self, width: int, rng: np.random.Generator) -> np.ndarray:
        total, n_centre = self.line_counts(width)
        centre = _centre_band(width, n_centre)
        outside = np.setdiff1d(np.arange(width), centre)
        n_rest = total - n_centre
        picks = np.round(np.linspace(0, len(outside) - 1, n_rest)).astype(int) if n_rest else np.array([], int)
        return np.concatenate([centre, outside[picks]])


def make_mask(kind: str, acceleration: float, shape: tuple[int, int], seed: int = 0,
              center_fraction: float | None = None) -> SamplingMask:
    """Build a registered mask type (``random`` or ``equispaced``) for an image of ``shape``."""
    return MASKS.get(kind)(acceleration, center_fraction)(shape, seed)


def validate_mask(values: np.ndarray, shape: tuple[int, int], centred: bool,
                  source: str | Path = "mask") -> SamplingMask:
    """Check a user mask and convert it to the internal (uncentred) convention.

    Accepts a 2-D ``(H, W)`` array or a 1-D line pattern of length ``W``. Rejects non-finite or non-binary
    values, a shape that does not fit ``shape``, an empty mask, and a mask that samples DC only in the other
    convention than the one declared.
    """
    values = np.asarray(values)
    if values.ndim == 1:
        values = np.broadcast_to(values[None, :], (shape[0], values.shape[0]))
    if values.ndim != 2:
        raise InputError(f"mask must be 2-D (H, W) or 1-D (W,), got shape {values.shape}", source)
    if tuple(values.shape) != tuple(shape):
        raise InputError(f"mask shape {tuple(values.shape)} does not fit images of shape {tuple(shape)}", source)
    if not np.issubdtype(values.dtype, np.number) and values.dtype != bool:
        raise InputError(f"mask has non-numeric dtype {values.dtype}", source)
    values = values.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise InputError("mask contains NaN or Inf", source)
    if not np.all((values == 0) | (values == 1)):
        raise InputError("mask is not binary (values other than 0 and 1)", source)
    if values.sum() == 0:
        raise InputError("mask is empty (no sampled k-space)", source)
    uncentred = np.fft.ifftshift(values) if centred else values
    other = values if centred else np.fft.ifftshift(values)
    if uncentred[0, 0] == 0 and other[0, 0] == 1:
        declared = "centred" if centred else "uncentred"
        raise ConventionError(
            f"mask declared {declared} does not sample DC, but would under the other convention; "
            f"pass centred={not centred}",
            source,
        )
    return SamplingMask(uncentred.astype(np.float32), kind="file", acceleration=float(values.size / values.sum()))


def load_mask(path: str | Path, shape: tuple[int, int], centred: bool) -> SamplingMask:
    """Load and validate a ``.npy`` mask; ``centred`` states whether DC is at ``(H//2, W//2)`` in the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError("mask file not found", path)
    try:
        values = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise InputError(f"not a readable .npy array ({error.__class__.__name__}: {error})", path) from None
    return validate_mask(values, shape, centred, path)
