"""Shared fixtures: deterministic, tiny, offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A real, non-negative, phantom-like image: a few Gaussian blobs on an ellipse."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    image = ((((y - cy) / (0.42 * height)) ** 2 + ((x - cx) / (0.38 * width)) ** 2) < 1).astype(np.float64) * 0.5
    for _ in range(4):
        by, bx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
        image += rng.uniform(0.2, 0.5) * np.exp(-((y - by) ** 2 + (x - bx) ** 2) / (2 * (0.08 * height) ** 2))
    return image.astype(np.float32)


@pytest.fixture
def image_factory():
    return smooth_image


def hdf5_selections(monkeypatch: pytest.MonkeyPatch, read) -> list:
    """The selections every ``h5py.Dataset`` was indexed with while ``read()`` ran (readers must read one slice)."""
    import h5py

    selections = []
    original = h5py.Dataset.__getitem__

    def record(self: h5py.Dataset, selection: object) -> object:
        selections.append(selection)
        return original(self, selection)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", record)
    read()
    return selections


def shorten_acquisition_headers(path, head_bytes: int) -> None:
    """Rewrite an ISMRMRD file's ``/dataset/data`` with every acquisition header cut to ``head_bytes`` (an ISMRMRD
    header has 340), trajectories and samples kept: a file of another header layout or version."""
    import h5py

    with h5py.File(path, "r+") as file:
        rows = file["dataset/data"][()]
        layout = np.dtype([("head", f"V{head_bytes}"), ("traj", rows.dtype["traj"]), ("data", rows.dtype["data"])])
        short = np.zeros(len(rows), layout)
        short["traj"], short["data"] = rows["traj"], rows["data"]
        del file["dataset/data"]
        file["dataset"].create_dataset("data", data=short)
