"""A model repository of a serving system, written from validated exports: the seam every repository format plugs into.

A **repository format** (:class:`RepositoryFormat`, registered in :data:`SERVING_REPOSITORIES`) says what one entry
holds: its model name and its files (:meth:`RepositoryFormat.entry_files`), one of which, ``model_file``, is the
served model. Everything else is done here, once for every format:

* each export is loaded, its mask folded in and checked (:func:`~compressor.export.serving.mask_folding.fold_export`)
  and its entry described before anything is written;
* two exports with one model name are refused; so is an existing ``DIR/<model>`` that does not hold the same
  ``model_file`` (same bytes), naming it and what differs, and nothing is written;
* an existing entry holding the same model file is kept, each other file rewritten (atomically) only if it changed
  (action ``"unchanged"`` or ``"config updated"``); a new entry is written in a hidden folder beside it and renamed
  into place when complete (``"written"``).

Before the exports exist, :meth:`RepositoryFormat.check_planned` refuses from the metadata they will record what the
write would refuse after (an export that agrees on the metadata but holds other weights is found by the write).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import onnx
from google.protobuf.message import DecodeError

from compressor.errors import InputError, first_line
from compressor.export.exported_file import metadata_properties, read_exported_metadata
from compressor.export.runtimes.base import Runtime
from compressor.export.runtimes.registry import AUTO, choose_runtime, onnxruntime_cpu
from compressor.export.serving.mask_folding import FoldedExport, fold_export
from compressor.io import atomic_path
from compressor.registry import Registry


@dataclass(frozen=True)
class ServedExport:
    """A validated export to serve.

    Attributes:
        name: the export's name: the ``results.json`` name (``sft_kd/at/d3c5@4x``), a stage or weights file stem.
        path: its ONNX file, with this tool's metadata (any precision; the ``precision`` metadata names it).
    """

    name: str
    path: Path


@dataclass(frozen=True)
class PlannedEntry:
    """An export about to be written and served, as far as it is known before exporting: the name and precision
    that make its model name (:meth:`RepositoryFormat.model_name`) and the metadata that will tell which model it is.

    Attributes:
        name: as :attr:`ServedExport.name`.
        precision: the file's precision (``"fp32"``, ``"int8"``, ``"fp16"``).
        architecture, mask_digest, config_key, image_channels: what its metadata will record
            (:class:`~compressor.export.exported_file.ExportMetadata`; ``config_key`` ``None`` for bare weights).
    """

    name: str
    precision: str
    architecture: str
    mask_digest: str
    config_key: str | None
    image_channels: int


@dataclass(frozen=True)
class RepositoryEntry:
    """A model entry of the repository, as the write left it.

    Attributes:
        name: the model name (the folder name).
        folder: ``DIR/<name>``.
        source: the export it was made from.
        precision: the export's precision (``fp32`` when its metadata names none).
        action: ``"written"`` (new), ``"unchanged"`` (the same model and config were there) or ``"config updated"``
            (the same model file was there, with another config).
        max_abs_difference: max |folded - original export with the mask fed| over every output of the test batch.
        tolerance: the largest difference the check allowed
            (:data:`~compressor.export.serving.mask_folding.FOLD_RELATIVE_TOLERANCE`).
    """

    name: str
    folder: Path
    source: Path
    precision: str
    action: str
    max_abs_difference: float
    tolerance: float


@dataclass(frozen=True)
class _PreparedEntry:
    """An entry ready to write: its files' bytes by path relative to the entry folder."""

    name: str
    folded: FoldedExport
    files: dict[str, bytes]


class RepositoryFormat(ABC):
    """Base of the repository formats: subclass, implement :meth:`model_name` and :meth:`entry_files`, register
    with ``@SERVING_REPOSITORIES.register("name")``.

    Attributes:
        title: the serving system's name in messages, e.g. ``"Triton"``.
        option: the ``compress export`` option that names the repository, for messages.
        model_file: the served model's path in an entry (``"1/model.onnx"``); the same bytes there mean the same
            entry.
    """

    title: ClassVar[str]
    option: ClassVar[str]
    model_file: ClassVar[str]

    @abstractmethod
    def model_name(self, name: str, precision: str) -> str:
        """The model (folder) name of an export called ``name`` of ``precision``; :class:`InputError` if none."""

    @abstractmethod
    def entry_files(self, name: str, folded: FoldedExport) -> dict[str, bytes]:
        """The files of the entry ``name`` serving ``folded``, by path relative to the entry folder (``model_file``
        among them)."""

    def runtime(self, provider: str) -> Runtime:
        """The runtime that checks each folded model: the serving system's (default: ONNX Runtime, ``provider``
        when it is one of its execution providers, else its CPU provider)."""
        chosen = choose_runtime(provider)
        return chosen if chosen.is_onnxruntime else onnxruntime_cpu()

    def check_planned(self, planned: Sequence[PlannedEntry], repository: str | Path) -> None:
        """Refuse, before anything is exported, what :meth:`write` would refuse after: a repository that is a file,
        two exports with one model name, or an existing ``repository/<name>`` that is not an entry of this tool or
        whose model's metadata names another model (architecture, precision, mask, stage key, image channels).

        Raises:
            InputError: naming ``repository/<name>`` (or the repository) and the problem.
        """
        repository = self._folder(repository)
        by_name: dict[str, str] = {}
        for entry in planned:
            name = self.model_name(entry.name, entry.precision)
            if name in by_name:
                raise InputError(f"{by_name[name]!r} and {entry.name!r} ({entry.precision}) both map to the "
                                 f"{self.title} model name {name!r}", repository)
            by_name[name] = entry.name
            problem = self._planned_difference(repository / name, entry)
            if problem is not None:
                raise InputError(problem, repository / name)

    def write(self, sources: Sequence[ServedExport], repository: str | Path,
              provider: str = AUTO) -> list[RepositoryEntry]:
        """Write an entry ``repository/<model>`` for every export in ``sources`` (module docstring).

        Raises:
            InputError: a source that is not this tool's export, two sources with one model name, or an existing
                entry that holds another model (the message names ``repository/<model>`` and what differs).
            export.graph.validate.ExportValidationError: a folded model does not reproduce its export.
        """
        repository = self._folder(repository)
        runtime = self.runtime(provider)
        entries = [self._prepare(source, runtime) for source in sources]
        by_name: dict[str, Path] = {}
        for entry in entries:
            if entry.name in by_name:
                raise InputError(f"{by_name[entry.name]} and {entry.folded.source} both map to the {self.title} "
                                 f"model name {entry.name!r}", repository)
            by_name[entry.name] = entry.folded.source
        for entry in entries:
            folder = repository / entry.name
            problem = self._difference(folder, entry) if folder.exists() else None
            if problem is not None:
                raise InputError(problem, folder)
        repository.mkdir(parents=True, exist_ok=True)
        return [self._write_entry(repository / entry.name, entry) for entry in entries]

    def _folder(self, repository: str | Path) -> Path:
        repository = Path(repository)
        if repository.exists() and not repository.is_dir():
            raise InputError(f"the {self.title} model repository is a file, not a folder", repository)
        return repository

    def _prepare(self, source: ServedExport, runtime: Runtime) -> _PreparedEntry:
        folded = fold_export(Path(source.path), runtime)
        name = self.model_name(source.name, folded.metadata.precision)
        return _PreparedEntry(name, folded, self.entry_files(name, folded))

    def _write_entry(self, folder: Path, entry: _PreparedEntry) -> RepositoryEntry:
        if not folder.exists():
            with _staged_folder(folder) as staged:
                for relative, data in entry.files.items():
                    (staged / relative).parent.mkdir(parents=True, exist_ok=True)
                    (staged / relative).write_bytes(data)
            action = "written"
        else:
            changed = {relative: data for relative, data in entry.files.items() if relative != self.model_file
                       and not ((folder / relative).is_file() and (folder / relative).read_bytes() == data)}
            for relative, data in changed.items():
                with atomic_path(folder / relative) as staged_file:
                    staged_file.write_bytes(data)
            action = "config updated" if changed else "unchanged"
        folded = entry.folded
        return RepositoryEntry(entry.name, folder, folded.source, folded.metadata.precision, action,
                               folded.max_abs_difference, folded.tolerance)

    def _difference(self, folder: Path, entry: _PreparedEntry) -> str | None:
        """Why the existing ``folder`` cannot stand for ``entry`` (``None`` when it holds the same model file)."""
        if not folder.is_dir():
            return "exists and is not a folder"
        existing_file = folder / self.model_file
        if not existing_file.is_file():
            return f"exists without {self.model_file}: not a model entry written from this export"
        existing, ours = existing_file.read_bytes(), entry.files[self.model_file]
        if existing == ours:
            return None
        try:
            theirs = metadata_properties(onnx.load_from_string(existing))
        except DecodeError:  # an unreadable file is simply another model
            theirs = {}
        own = metadata_properties(onnx.load_from_string(ours))
        keys = sorted(key for key in set(theirs) | set(own) if theirs.get(key) != own.get(key))
        detail = f"metadata differs in {', '.join(keys)}" if keys else "same metadata, other graph or weights"
        return (f"holds another model: {self.model_file} is sha256 {_digest(existing)}, this export's "
                f"{_digest(ours)} ({detail}) from {entry.folded.source}; remove it or choose another {self.option}")

    def _planned_difference(self, folder: Path, planned: PlannedEntry) -> str | None:
        """Why the existing entry ``folder`` cannot be ``planned``'s, from its model file's metadata (``None`` when
        the metadata names the same model: whether it holds the same weights is known only after the export)."""
        if not folder.exists():
            return None
        if not folder.is_dir():
            return "exists and is not a folder"
        existing = folder / self.model_file
        if not existing.is_file():
            return f"exists without {self.model_file}: not a model entry written by this tool"
        try:
            metadata = read_exported_metadata(existing)
        except (OSError, DecodeError, InputError) as error:
            return f"holds a model this tool cannot read as its export ({first_line(error)})"
        theirs = {"architecture": metadata.architecture, "precision": metadata.precision,
                  "mask_digest": metadata.mask_digest, "config_key": metadata.config_key,
                  "image_channels": metadata.image_channels}
        ours = {key: getattr(planned, key) for key in theirs}
        differing = [f"{key} {theirs[key]!r} (this export: {ours[key]!r})" for key in theirs
                     if theirs[key] != ours[key]]
        if not differing:
            return None
        return f"holds another model: {', '.join(differing)}; remove it or choose another {self.option}"


SERVING_REPOSITORIES: Registry[type[RepositoryFormat]] = Registry("serving repository format")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


@contextmanager
def _staged_folder(folder: Path) -> Iterator[Path]:
    """A hidden temporary folder beside ``folder``, renamed onto it only if the block completes."""
    staged = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        yield staged
        staged.chmod(0o777 & ~_umask())  # mkdtemp creates 0700; give the entry the usual permissions
        os.rename(staged, folder)
    finally:
        if staged.exists():
            shutil.rmtree(staged)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
