"""The default dataset: real anatomy that ships with the tool's dependencies, so nothing is downloaded.

Source: the MNI ICBM152 2009a nonlinear symmetric T1 template (``mni_icbm152_t1_tal_nlin_sym_09a_converted
.nii.gz``, 197 x 233 x 189 uint8, 1 mm isotropic, RAS orientation) inside the ``nilearn`` wheel. Copyright
McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University; free to use with
attribution. It is a real (magnitude) image: its k-space is simulated, as for every images-only source.

On first use :func:`build_mni_volume` converts it into the project's HDF5 layout and caches it:

* optional ``downsample``: average over ``d x d`` in-plane voxel blocks (``d`` mm pixels, 1 mm slice spacing);
* intensities divided by the volume's maximum (so in ``[0, 1]``);
* axial slices (the template's third axis), keeping only those in which more than 5 % of the pixels are
  non-zero (the template's background is exactly 0, so this drops the near-empty slices above and below
  the head);
* each slice rotated by ``np.rot90`` so that, displayed with row 0 at the top, anterior is up and the
  subject's left is on the left;
* centre crop/zero-pad to ``image_size x image_size`` (240 by default, MRBrainS's size; the 1 mm slices are
  233 x 197 before padding).

:func:`mni_splits` divides the slices into train/validation/test slabs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import nibabel
import numpy as np

from compressor.data.project_h5 import write_project_volume
from compressor.data.transforms import centre_crop_or_pad
from compressor.errors import InputError

TEMPLATE_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
TEMPLATE_DESCRIPTION = "MNI ICBM152 2009a nonlinear symmetric T1 template"
TEMPLATE_NOTICE = "(c) McConnell Brain Imaging Centre, MNI, McGill University; free use with attribution"
CACHE_ENV = "SFT_KD_RECON_CACHE"
MIN_NONZERO_FRACTION = 0.05


def mni_template_path() -> Path:
    """The T1 template file inside the installed ``nilearn`` package."""
    try:
        import nilearn
    except ImportError:
        raise InputError("the embedded MNI dataset needs nilearn: pip install nilearn") from None
    path = Path(nilearn.__file__).parent / "datasets" / "data" / TEMPLATE_FILE
    if not path.is_file():
        raise InputError("the installed nilearn does not ship the MNI T1 template; pip install nilearn", path)
    return path


def default_cache_dir() -> Path:
    """``$SFT_KD_RECON_CACHE`` if set, else the user cache folder (``~/.cache/sft-kd-recon`` on Linux)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    try:
        import platformdirs
    except ImportError:
        return Path.home() / ".cache" / "sft-kd-recon"
    return Path(platformdirs.user_cache_dir("sft-kd-recon"))


def block_average(volume: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor x factor`` in-plane blocks of ``volume`` ``(X, Y, Z)``; remainders are dropped.

    Only the axial plane is averaged: slices stay 1 mm apart, so a smaller image keeps every slice (more
    training slices for the small presets) while the in-plane resolution becomes ``factor`` mm.
    """
    if factor == 1:
        return volume
    sx, sy = volume.shape[0] // factor, volume.shape[1] // factor
    trimmed = volume[: sx * factor, : sy * factor]
    return trimmed.reshape(sx, factor, sy, factor, volume.shape[2]).mean(axis=(1, 3))


def axial_slices(volume: np.ndarray, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(slices (S, image_size, image_size), kept z indices (S,))`` from an RAS volume ``(X, Y, Z)``.

    Keeps the slices with more than :data:`MIN_NONZERO_FRACTION` non-zero pixels, rotated anterior-up.
    """
    nonzero_fraction = (volume > 0).mean(axis=(0, 1))
    kept = np.flatnonzero(nonzero_fraction > MIN_NONZERO_FRACTION)
    # (X, Y) -> (Y, X) with Y decreasing down the rows: anterior (high Y) at the top.
    rotated = np.stack([np.rot90(volume[:, :, z]) for z in kept])
    return centre_crop_or_pad(rotated, (image_size, image_size)).astype(np.float32), kept


def build_mni_volume(cache_dir: Path | None = None, image_size: int = 240, downsample: int = 1,
                     log: Callable[[str], None] = print) -> Path:
    """The cached project-layout HDF5 file of the MNI template, converting it on first use.

    Args:
        cache_dir: folder of the cache; default :func:`default_cache_dir`.
        image_size: side of the square slices.
        downsample: integer in-plane block-averaging factor (``2`` gives 2 mm pixels; slices stay 1 mm apart).
        log: receives one message on conversion (source, licence note, cache path); nothing when cached.

    Returns:
        ``<cache_dir>/mni152_t1_{image_size}px_ip{downsample}.h5``. The file is written under a temporary
        name and renamed when complete, so an interrupted conversion is redone on the next call.
    """
    if image_size < 1 or downsample < 1:
        raise InputError(f"MNI image_size and downsample must be >= 1, got {image_size} and {downsample}")
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"mni152_t1_{image_size}px_ip{downsample}.h5"
    if path.is_file():
        return path
    template = mni_template_path()
    volume = block_average(np.asarray(nibabel.load(template).dataobj, dtype=np.float32), downsample)
    slices, kept = axial_slices(volume / volume.max(), image_size)
    if len(slices) == 0:
        raise InputError(f"no MNI slice has more than {MIN_NONZERO_FRACTION:.0%} non-zero pixels", template)
    write_project_volume(path, slices, attrs={
        "source": f"{TEMPLATE_DESCRIPTION} ({template.name}, shipped in nilearn); {TEMPLATE_NOTICE}",
        "voxel_size_mm": [float(downsample), float(downsample), 1.0],
        "template_z_indices": kept,
        "orientation": "axial slices, anterior up, subject's left on the left",
    })
    log(f"Embedded dataset: converted the {TEMPLATE_DESCRIPTION} shipped in nilearn ({TEMPLATE_NOTICE}) into "
        f"{len(slices)} axial slices of {image_size}x{image_size} px at {downsample} mm, cached at {path}")
    return path


def mni_splits(n_slices: int, slab: int = 8, gap: int = 3) -> dict[str, list[int]]:
    """Deterministic train/validation/test split of ``n_slices`` neighbouring slices into alternating slabs.

    Walking along z the pattern repeats: ``slab`` train slices, ``gap`` unused, ``slab // 2`` validation,
    ``gap`` unused, ``slab // 2`` test, ``gap`` unused. Every split therefore samples the whole brain, no
    slice is shared, and slabs of different splits are at least ``gap`` slices apart (neighbouring slices
    are nearly identical, so adjacent slabs would leak). The last period may be cut short.

    Returns:
        ``{"train": [...], "validation": [...], "test": [...]}``, sorted slice indices, none empty.
    """
    if slab < 2 or gap < 0:
        raise InputError(f"MNI split needs slab >= 2 and gap >= 0, got slab={slab}, gap={gap}")
    pattern = [("train", slab), (None, gap), ("validation", slab // 2), (None, gap), ("test", slab // 2), (None, gap)]
    needed = slab + 2 * gap + slab // 2 + 1
    if n_slices < needed:
        raise InputError(f"{n_slices} slices are too few for train/validation/test slabs of {slab} with gaps "
                         f"of {gap} (need at least {needed}); use a smaller downsample")
    splits: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    position = 0
    while position < n_slices:
        for split, length in pattern:
            stop = min(position + length, n_slices)
            if split is not None:
                splits[split].extend(range(position, stop))
            position = stop
    return splits
