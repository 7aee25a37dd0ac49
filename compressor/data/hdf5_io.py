"""Checked reads of HDF5 volume files: every problem is an :class:`~compressor.errors.InputError` naming the file and
the key (and the slice)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from compressor.data.volume import check_finite
from compressor.errors import InputError

HDF5_EXTENSIONS = (".h5", ".hdf5")


@contextmanager
def open_hdf5(path: Path) -> Iterator[h5py.File]:
    """Open ``path`` read-only; a file h5py cannot open becomes an :class:`InputError`."""
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise InputError(f"not an HDF5 file, or corrupt ({error})", path) from None
    with file:
        yield file


def require_dataset(file: h5py.File, key: str, path: Path, layout: str,
                    complex_valued: bool | None) -> h5py.Dataset:
    """The dataset ``key``, checked to have ``layout``'s dimensionality (``"(S, H, W)"`` is 3-D) and dtype.

    ``complex_valued=True`` asks for a complex dtype, ``False`` for a real numeric one, ``None`` for either.
    """
    if key not in file:
        raise InputError(f"missing key {key!r} (the file has: {', '.join(sorted(file.keys())) or 'nothing'})", path)
    dataset = file[key]
    if not isinstance(dataset, h5py.Dataset):
        raise InputError("is a group, expected a dataset", path, key)
    ndim = layout.count(",") + 1
    if dataset.ndim != ndim:
        raise InputError(f"expected a {ndim}-D array {layout}, got shape {dataset.shape}", path, key)
    kind = dataset.dtype.kind
    if complex_valued and kind != "c":
        raise InputError(f"expected complex values, got dtype {dataset.dtype}", path, key)
    if complex_valued is False and kind not in "fiu":
        raise InputError(f"expected real numbers, got dtype {dataset.dtype}", path, key)
    if complex_valued is None and kind not in "fiuc":
        raise InputError(f"expected real or complex numbers, got dtype {dataset.dtype}", path, key)
    return dataset


def refuse_complex_image(dataset: h5py.Dataset, path: Path, key: str) -> None:
    """Raise :class:`InputError` when the image ``dataset`` is complex: only the 2-channel models take its phase."""
    if dataset.dtype.kind == "c":
        raise InputError(f"complex image (dtype {dataset.dtype}): a complex target needs the 2-channel models "
                         "(compress --channels 2)", path, key)


def read_hdf5_slice(file: h5py.File, key: str, selection: Any, path: Path, index: int) -> np.ndarray:
    """``file[key][selection]``, the data of slice ``index``, checked to be readable and finite."""
    try:
        data = file[key][selection]
    except OSError as error:
        raise InputError(f"cannot read slice {index} ({error})", path, key) from None
    check_finite(data, path, key, index)
    return data



def image_dtype(dataset: h5py.Dataset) -> type[np.generic]:
    """complex64 for a complex image dataset, float32 for a real one."""
    return np.complex64 if dataset.dtype.kind == "c" else np.float32
