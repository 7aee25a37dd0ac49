"""What a run was given: ``config.json`` (the RunConfig of the last invocation) and the sampling masks
(``masks/mask_<R>x.npy``, float32 ``(H, W)``, uncentred)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compressor.errors import InputError
from compressor.io import load_json, save_json, write_atomic
from compressor.json_record import json_object
from compressor.rundir.layout import RunLayout, mask_file
from compressor.rundir.results import MaskRecord


def read_config(run_dir: Path):
    """The :class:`~compressor.config.RunConfig` of the run's ``config.json``."""
    from compressor.config import config_from_file  # the config imports the model and KD registries (torch)

    path = RunLayout(Path(run_dir)).config
    return config_from_file(json_object(load_json(path), path), path)


def write_config(run_dir: Path, config: Any) -> Path:
    return save_json(RunLayout(Path(run_dir)).config, config.to_dict())


def save_mask(run_dir: Path, acceleration: float, values: np.ndarray, digest: str) -> MaskRecord:
    """Write an acceleration's mask as ``masks/mask_<R>x.npy`` (float32, uncentred) and return its record."""
    relative = mask_file(acceleration)
    array = np.ascontiguousarray(values, dtype=np.float32)

    def write(path: Path) -> None:
        with open(path, "wb") as stream:
            np.save(stream, array, allow_pickle=False)

    write_atomic(Path(run_dir) / relative, write)
    return MaskRecord(relative, digest)


def load_mask_values(run_dir: Path, relative: str) -> np.ndarray:
    """The float32 ``(H, W)`` values of a saved mask (never unpickles)."""
    path = Path(run_dir) / relative
    try:
        values = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError("mask file not found", path) from None
    except (OSError, ValueError) as error:
        raise InputError(f"not a readable .npy mask ({error})", path) from None
    if values.ndim != 2:
        raise InputError(f"expected a 2-D mask, got shape {values.shape}", path)
    return values.astype(np.float32)

