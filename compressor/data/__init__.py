"""Data: readers for every source, the slice dataset, the embedded MNI default, and the splits a run uses.

:func:`build_splits` turns the ``[data]`` section of a configuration into train/validation(/test)
:class:`SliceDataset` objects sharing one sampling mask per acceleration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compressor.data.dataset import (
    NormalisedInput,
    SliceDataset,
    SuperResolutionDataset,
    centre_crop_or_pad,
    no_measurement_mask,
    normalise_kspace,
)
from compressor.data.project_h5 import write_project_volume
from compressor.data.readers import list_volume_files, open_volume
from compressor.data.sample import Sample
from compressor.data.section import DataConfig
from compressor.data.sources import MNI_SOURCE, data_source, data_source_names
from compressor.data.volume import VOLUME_SOURCES, SliceData, VolumeReader
from compressor.errors import InputError
from compressor.masks import SamplingMask, acceleration_label, load_mask, make_mask
from compressor.vocabulary import Task, values

__all__ = [
    "MNI_SOURCE",
    "VOLUME_SOURCES",
    "DataSplits",
    "NormalisedInput",
    "Sample",
    "SliceData",
    "SliceDataset",
    "SuperResolutionDataset",
    "VolumeReader",
    "build_splits",
    "centre_crop_or_pad",
    "check_coil_options",
    "data_source",
    "data_source_names",
    "list_volume_files",
    "normalise_kspace",
    "open_volume",
    "write_project_volume",
]

TASKS = values(Task)


@dataclass
class DataSplits:
    """The datasets of one run at one acceleration (for ``sr``: one scale), and the mask they share (``sr``: the
    all-zero :func:`~compressor.data.dataset.no_measurement_mask`)."""

    train: SliceDataset
    validation: SliceDataset
    test: SliceDataset | None
    mask: SamplingMask
    description: str


def evenly_spaced(items: Sequence[tuple[int, int]], limit: int | None) -> list[tuple[int, int]]:
    """At most ``limit`` of ``items``, evenly spaced and in order, first and last included (deterministic)."""
    if limit is None or len(items) <= limit:
        return list(items)
    if limit < 1:
        raise InputError(f"slice limits must be >= 1, got {limit}")
    picks = np.unique(np.round(np.linspace(0, len(items) - 1, limit)).astype(int))
    return [items[i] for i in picks]


def build_mask(config: DataConfig, acceleration: float, shape: tuple[int, int] | None = None) -> SamplingMask:
    """The run's mask: ``mask_file`` (``{acceleration}`` replaced, e.g. ``mask_{acceleration}x.npy``) or a
    generated ``mask_type`` mask of ``shape`` (default ``image_size x image_size``; the measured grid of 2-channel
    runs on measured k-space, :func:`measurement_grid`); for the ``sr`` task, where ``acceleration`` is the integer
    scale, the all-zero :func:`~compressor.data.dataset.no_measurement_mask`."""
    shape = shape or (config.image_size, config.image_size)
    if config.task == "sr":
        if acceleration != int(acceleration):
            raise InputError(f"the super-resolution scale must be an integer, got {acceleration:g}")
        return no_measurement_mask(shape, int(acceleration))
    if config.mask_file:
        path = Path(config.mask_file.replace("{acceleration}", acceleration_label(acceleration))).expanduser()
        return load_mask(path, shape, centred=config.mask_centred)
    return make_mask(config.mask_type, acceleration, shape, seed=config.mask_seed,
                     center_fraction=config.center_fraction)


def measurement_grid(readers: Sequence[VolumeReader], config: DataConfig, image_channels: int) -> tuple[int, int]:
    """The ``(H, W)`` grid the models run on (and the mask's shape): ``image_size x image_size``, except for 2-channel
    models on sources that store k-space, which keep the grid their phase-encode lines were measured on (k-space cannot
    be cropped along them); those volumes must then share one grid."""
    square = (config.image_size, config.image_size)
    if image_channels != 2:
        return square
    grids = {reader.image_shape: reader for reader in readers if reader.stores_kspace}
    if len(grids) > 1:
        (first, a), (second, b) = list(grids.items())[:2]
        raise InputError(f"measured on a {second[0]}x{second[1]} grid, while {a.path} is {first[0]}x{first[1]}: "
                         "k-space cannot be cropped along the phase-encode lines, so one run takes volumes of one "
                         "grid", b.path)
    return next(iter(grids), square)


def run_grid(config: DataConfig, acceleration: float, image_channels: int) -> tuple[int, int]:
    """The grid of a run's models (:func:`measurement_grid`) from the files' headers alone, for planning a run's
    masks before any slice is read: ``image_size x image_size`` unless 2-channel models meet stored k-space."""
    if image_channels != 2 or config.task == "sr":
        return config.image_size, config.image_size
    return measurement_grid(data_source(config.source).grid_readers(config, acceleration), config, image_channels)


def _check_phase(readers: Sequence[VolumeReader], phase: str) -> None:
    """A synthetic phase is for magnitude images: a file that stores k-space carries its own phase."""
    if phase == "none":
        return
    for reader in readers:
        if reader.stores_kspace:
            raise InputError(f"stores k-space, which carries its own phase: --phase {phase} is for magnitude images "
                             "(the embedded data, NIfTI)", reader.path)


def check_coil_options(config: DataConfig) -> None:
    """``[data] coils``, ``snr`` and ``coil_seed`` where they cannot apply, from the config alone: ``snr`` or
    ``coil_seed`` without coils, and coils for the super-resolution task (which measures no k-space)."""
    if config.coils is None:
        stray = [f"{name} {value!r}" for name, value in (("snr", config.snr), ("coil_seed", config.coil_seed))
                 if value is not None]
        if stray:
            raise InputError(f"[data] {stray[0]} describes simulated coils, which this run has none of: set [data] "
                             "coils (--coils N)")
        return
    if config.task == Task.SR:
        raise InputError("[data] coils simulates multi-coil k-space measurements, which the super-resolution task "
                         "does not use (it degrades images)")


def _check_coils(readers: Sequence[VolumeReader], config: DataConfig) -> None:
    """Coils are simulated for images: a file that stores k-space was measured with coils of its own."""
    check_coil_options(config)
    if config.coils is None:
        return
    for reader in readers:
        if reader.stores_kspace:
            raise InputError(f"stores k-space measured with its own coils: --coils {config.coils} simulates coils "
                             "for magnitude images (the embedded data, NIfTI)", reader.path)


def build_splits(config: DataConfig, acceleration: float, log: Callable[[str], None] = print,
                 image_channels: int = 1) -> DataSplits:
    """Datasets for ``config`` at ``acceleration``, for models of ``image_channels`` (2: complex data kept,
    :class:`SliceDataset`).

    ``source = "mni"`` builds (or reuses) the cached MNI volume and splits its slices into slabs
    (:func:`~compressor.data.embedded.mni_splits`); file sources read ``train``, ``validation`` and optionally
    ``test``. ``max_train_slices`` caps the training slices, ``max_eval_slices`` the validation and test
    slices, each keeping evenly spaced slices. ``downsample`` and ``cache_dir`` apply to ``mni`` only.
    Every chosen slice is read once (:meth:`SliceDataset.scan`): NaN, Inf or an all-zero target stops here, naming
    the file and slice, before anything trains.
    """
    if config.task not in TASKS:
        raise InputError(f"unknown task {config.task!r}; valid: {', '.join(TASKS)}")
    source = data_source(config.source)
    if config.downsample != 1 and not source.takes_downsample:
        raise InputError(f"[data] downsample applies only to source {MNI_SOURCE!r}, got {config.downsample} for "
                         f"{source.name!r}")
    size = config.image_size
    super_resolution = config.task == "sr"
    keep_phase = image_channels == 2
    mask = build_mask(config, acceleration, run_grid(config, acceleration, image_channels))
    splits = source.open_splits(config, acceleration, keep_phase, log)
    _check_phase([reader for readers in splits.readers.values() for reader in readers], config.phase)
    _check_coils([reader for readers in splits.readers.values() for reader in readers], config)
    coils = config.coil_simulation()
    limits = {"train": config.max_train_slices, "validation": config.max_eval_slices, "test": config.max_eval_slices}
    datasets = {
        name: SuperResolutionDataset(splits.readers[name], int(acceleration), config.sr_interpolation, size,
                                     evenly_spaced(slices, limits[name])) if super_resolution
        else SliceDataset(splits.readers[name], mask, size, evenly_spaced(slices, limits[name]), image_channels,
                          config.phase, coils)
        for name, slices in splits.slices.items()
    }
    for dataset in datasets.values():
        dataset.scan()
    counts = ", ".join(f"{name} {len(dataset)}" for name, dataset in datasets.items())
    degradation = (f"super-resolution x{acceleration:g} (k-space truncation, {config.sr_interpolation} "
                   "interpolation)" if super_resolution else
                   f"{mask.kind} mask {acceleration_label(acceleration)}x (digest {mask.digest()})")
    grid = "" if mask.shape == (size, size) else f" scored, on a {mask.shape[0]}x{mask.shape[1]} measured grid"
    phase = {"none": "", "synthetic": ", synthetic phase (a simulation)"}[config.phase]
    images = ", complex (2 channels)" if keep_phase else ""
    simulated = f", {coils.describe()}" if coils is not None else ""
    description = (f"{splits.origin}, {size}x{size} px{grid}{images}{phase}{simulated}, slices: {counts}; "
                   f"{degradation}")
    return DataSplits(train=datasets["train"], validation=datasets["validation"], test=datasets.get("test"),
                      mask=mask, description=description)
