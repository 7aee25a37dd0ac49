"""A run's data sources (``[data] source``): the embedded MNI template, or the files of a registered volume source.

:func:`data_source` is the one lookup and :func:`data_source_names` the one list: ``mni``, then every name of
:data:`~compressor.data.volume.VOLUME_SOURCES`. A :class:`DataSource` opens the volumes of a run's splits
(:meth:`~DataSource.open_splits`) and names those whose stored k-space fixes the grid of a 2-channel run
(:meth:`~DataSource.grid_readers`):

* ``mni`` (:class:`EmbeddedMni`): the cached MNI volume (:mod:`compressor.data.embedded`), its slices split into
  slabs (:func:`~compressor.data.embedded.mni_splits`); the only source that takes ``downsample``;
* every volume source (:class:`VolumeFiles`): the files or folders that ``[data] train``, ``validation`` and
  ``test`` name, each file one volume read by its source's reader.

Adding a data source: a file format is a :class:`~compressor.data.volume.VolumeReader` registered in
:data:`~compressor.data.volume.VOLUME_SOURCES` and needs nothing here; another embedded dataset is a
:class:`DataSource` subclass and one entry of :data:`EMBEDDED_SOURCES`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from compressor.data.embedded import build_mni_volume, mni_splits
from compressor.data.readers import ProjectH5Reader, list_volume_files
from compressor.data.volume import VOLUME_SOURCES, ReadOptions, VolumeReader
from compressor.errors import InputError

if TYPE_CHECKING:
    from compressor.data.section import DataConfig

MNI_SOURCE = "mni"
FILE_SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class SourceSplits:
    """The volumes of a run's splits.

    Attributes:
        readers: per split (``train``, ``validation``, and ``test`` when there is one), its volumes.
        slices: per split, its slices as ``(index into readers[split], slice index)``, in order.
        origin: where they come from, for the run's description (e.g. ``"fastmri volumes"``).
    """

    readers: dict[str, list[VolumeReader]]
    slices: dict[str, list[tuple[int, int]]]
    origin: str


class DataSource(ABC):
    """Where a run's slices come from.

    Attributes:
        name: the ``[data] source`` name.
        takes_downsample: whether ``[data] downsample`` applies (it is refused for the other sources).
    """

    name: str
    takes_downsample: ClassVar[bool] = False

    @abstractmethod
    def open_splits(self, config: DataConfig, acceleration: float, keep_phase: bool,
                    log: Callable[[str], None]) -> SourceSplits:
        """The volumes and slices of every split of ``config`` at ``acceleration``; ``keep_phase`` opens the readers
        for the 2-channel models (:mod:`compressor.data.volume`); ``log`` receives one-off messages."""

    def phase_formation(self) -> int:
        """The version of how this source forms the 2-channel models' slices (``VolumeReader.phase_formation``)."""
        return 1

    def grid_readers(self, config: DataConfig, acceleration: float) -> list[VolumeReader]:
        """The volumes, opened with ``keep_phase`` from their headers alone, whose stored k-space fixes a 2-channel
        run's grid (:func:`compressor.data.measurement_grid`); none for a source of images."""
        return []


class EmbeddedMni(DataSource):
    """The MNI ICBM152 T1 template shipped with nilearn, converted and cached once (``cache_dir``, ``image_size``,
    ``downsample``), one volume split into slabs."""

    name = MNI_SOURCE
    takes_downsample = True

    def open_splits(self, config: DataConfig, acceleration: float, keep_phase: bool,
                    log: Callable[[str], None]) -> SourceSplits:
        cache = Path(config.cache_dir) if config.cache_dir else None
        volume = build_mni_volume(cache, config.image_size, config.downsample, log)
        readers = [ProjectH5Reader(volume, keep_phase=keep_phase)]
        slices = {name: [(0, s) for s in indices] for name, indices in mni_splits(len(readers[0])).items()}
        return SourceSplits({name: readers for name in slices}, slices, f"MNI ICBM152 T1 template ({volume})")


class VolumeFiles(DataSource):
    """The volume files of one registered source (:data:`~compressor.data.volume.VOLUME_SOURCES`) that the
    configuration names per split: a file, or a folder of them (:func:`~compressor.data.readers.list_volume_files`).
    """

    def __init__(self, name: str):
        self.name = name
        self.reader = VOLUME_SOURCES.get(name)

    def phase_formation(self) -> int:
        return self.reader.phase_formation

    def open_splits(self, config: DataConfig, acceleration: float, keep_phase: bool,
                    log: Callable[[str], None]) -> SourceSplits:
        names = ["train", "validation"] + (["test"] if config.test else [])
        readers = {name: self._open(config, name, acceleration, keep_phase) for name in names}
        slices = {name: [(r, s) for r, reader in enumerate(volumes) for s in range(len(reader))]
                  for name, volumes in readers.items()}
        return SourceSplits(readers, slices, f"{self.name} volumes")

    def grid_readers(self, config: DataConfig, acceleration: float) -> list[VolumeReader]:
        return [reader for split in FILE_SPLITS if getattr(config, split)
                for reader in self._open(config, split, acceleration, keep_phase=True)]

    def _open(self, config: DataConfig, split: str, acceleration: float, keep_phase: bool) -> list[VolumeReader]:
        """The readers of the file or folder that ``config`` names for ``split``; two volumes of one name refused."""
        location = getattr(config, split)
        if location is None:
            raise InputError(f"[data] {split} must name a file or folder for source {self.name!r}")
        # fastMRI with phase: the readout oversampling is removed by cropping the readout to the scored size
        recon_size = (config.image_size, config.image_size) if keep_phase else None
        options = ReadOptions(keep_phase, acceleration, recon_size, config.fastmri_target_key)
        readers = [self.reader.open(path, options) for path in list_volume_files(location, self.name)]
        first_of: dict[str, Path] = {}
        for reader in readers:  # a slice is (volume name, index) in results and in the teacher-feature cache
            if reader.name in first_of:
                raise InputError(f"two {split} volumes are both named {reader.name!r} ({first_of[reader.name].name} "
                                 f"and {reader.path.name}); rename one", reader.path)
            first_of[reader.name] = reader.path
        return readers


EMBEDDED_SOURCES: dict[str, DataSource] = {MNI_SOURCE: EmbeddedMni()}
"""The data sources that are not files of a volume source, by name."""


def data_source_names() -> list[str]:
    """Every ``[data] source`` name: the embedded ones, then the volume sources."""
    return [*EMBEDDED_SOURCES, *VOLUME_SOURCES.names()]


def data_source(name: str) -> DataSource:
    """The data source ``name`` (any case); an unknown name is an :class:`InputError` listing the valid ones."""
    key = name.lower()
    if key in EMBEDDED_SOURCES:
        return EMBEDDED_SOURCES[key]
    if key in VOLUME_SOURCES:
        return VolumeFiles(key)
    raise InputError(f"unknown data source {name!r}; valid names: {', '.join(data_source_names())}")
