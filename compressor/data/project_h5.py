"""The project's own HDF5 volume layout (written here, read by :class:`compressor.data.readers.ProjectH5Reader`).

One volume per file::

    /target          (S, H, W) float32   fully sampled real (or magnitude) images, one per slice   [required]
                     (S, H, W) complex64 ... or fully sampled complex images (2-channel models only)
    /mask            (H, W)    float32   0/1 sampling mask, uncentred (DC at (0, 0))             [optional]
    /kspace          (S, H, W) complex64 fully sampled k-space, uncentred, orthonormal FFT       [optional]
    attrs:
      format           = "sft-kd-recon-volume"   identifies the layout; files without it are rejected
      version          = 1
      kspace_convention = "uncentred"
      source           free-text provenance (where the images came from)
      voxel_size_mm    voxel size, e.g. [1.0, 1.0, 1.0]
      ...              any further attributes the writer passes (acquisition metadata)

Without ``kspace`` the dataset simulates k-space from ``target`` (``y = M ⊙ F(x)``); with it, ``kspace`` is
undersampled directly and ``target`` should be its real inverse transform (for the 1-channel models; the 2-channel
models take the complex image ``ifft2(kspace)`` instead). A complex ``target`` carries the phase of the images; only
the 2-channel (complex) models read it (``compress --channels 2``); for the 1-channel models it is an error. The
``mask`` records how a volume was (or is to be) undersampled; training uses the one mask per acceleration chosen by
the configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from compressor.errors import InputError
from compressor.io import atomic_path

FORMAT = "sft-kd-recon-volume"
VERSION = 1
KSPACE_CONVENTION = "uncentred"
TARGET_KEY = "target"
MASK_KEY = "mask"
KSPACE_KEY = "kspace"
RESERVED_ATTRS = ("format", "version", "kspace_convention")


def _check_arrays(target: np.ndarray, mask: np.ndarray | None, kspace: np.ndarray | None) -> None:
    """Reject arrays that do not fit the layout (programming errors of the caller, hence ``ValueError``)."""
    if target.ndim != 3:
        raise ValueError(f"target must be (S, H, W), got shape {target.shape}")
    if not np.all(np.isfinite(target)):
        raise ValueError("target contains NaN or Inf")
    if mask is not None and mask.shape != target.shape[1:]:
        raise ValueError(f"mask must be (H, W) = {target.shape[1:]}, got shape {mask.shape}")
    if kspace is not None and kspace.shape != target.shape:
        raise ValueError(f"kspace must have the target's shape {target.shape}, got {kspace.shape}")
    if kspace is not None and not np.all(np.isfinite(kspace)):
        raise ValueError("kspace contains NaN or Inf")


def write_project_volume(
    path: str | Path,
    target: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    kspace: np.ndarray | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write one volume in the project layout; returns the path.

    Args:
        path: destination ``.h5`` file; its folder is created if needed.
        target: ``(S, H, W)`` real images, stored as float32, or complex images, stored as complex64.
        mask: optional ``(H, W)`` 0/1 mask, uncentred.
        kspace: optional ``(S, H, W)`` complex fully sampled k-space, uncentred, stored as complex64.
        attrs: extra file attributes (``source``, ``voxel_size_mm``, acquisition metadata); the layout's own
            attributes (``format``, ``version``, ``kspace_convention``) cannot be overridden.

    The file is written under a temporary name in the destination folder and renamed when complete, so an
    interrupted write never leaves a file that looks finished.
    """
    path = Path(path)
    target = np.asarray(target)
    target = target.astype(np.complex64 if np.iscomplexobj(target) else np.float32)
    _check_arrays(target, mask, kspace)
    extra = dict(attrs or {})
    clashing = sorted(set(extra) & set(RESERVED_ATTRS))
    if clashing:
        raise ValueError(f"attribute {clashing[0]!r} is set by the layout and cannot be overridden")
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as file:
        file.create_dataset(TARGET_KEY, data=target)
        if mask is not None:
            file.create_dataset(MASK_KEY, data=np.asarray(mask, dtype=np.float32))
        if kspace is not None:
            file.create_dataset(KSPACE_KEY, data=np.asarray(kspace, dtype=np.complex64))
        file.attrs.update({"source": "unknown", "voxel_size_mm": [1.0, 1.0, 1.0], **extra})
        file.attrs.update({"format": FORMAT, "version": VERSION, "kspace_convention": KSPACE_CONVENTION})
    return path


def check_project_attrs(attrs: Mapping[str, Any], path: Path) -> None:
    """Raise :class:`InputError` unless ``attrs`` (an HDF5 file's attributes) mark a project volume we can read."""
    if "format" not in attrs:
        raise InputError("not a sft-kd-recon volume (missing attribute 'format')", path)
    file_format = attrs["format"]
    file_format = file_format.decode() if isinstance(file_format, bytes) else str(file_format)
    if file_format != FORMAT:
        raise InputError(f"not a sft-kd-recon volume (attribute 'format' is {file_format!r}, expected {FORMAT!r})",
                         path)
    version = int(attrs.get("version", -1))
    if version != VERSION:
        raise InputError(f"unsupported sft-kd-recon volume version {version} (this tool reads version {VERSION})", path)
    convention = attrs.get("kspace_convention", KSPACE_CONVENTION)
    convention = convention.decode() if isinstance(convention, bytes) else str(convention)
    if convention != KSPACE_CONVENTION:
        raise InputError(f"k-space convention {convention!r} is not supported (expected {KSPACE_CONVENTION!r})", path)
