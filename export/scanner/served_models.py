r"""The models one ``compress serve`` serves (:class:`ServedModel`), found in what it is given
(:func:`find_model_files`) and opened once at start-up (:func:`open_served_models`).

Each argument of ``compress serve`` is:

* an exported file (``*.onnx``): served as its stem, ``sft_kd_at_d3c5@4x`` or ``sft_kd_at_d3c5@4x.int8``;
* a run's exports folder (``RUN/exports``), or the run folder itself: every ``*.onnx`` in it, each as above;
* a Triton repository (``compress export --triton-repo DIR``: ``DIR/<model>/1/model.onnx``): each model served as
  its Triton name (``sft_kd-at-d3c5-4x``, ``sft_kd-at-d3c5-4x-int8``), the training mask folded into its graph.

An fp32 export also answers to its results name (the metadata's ``origin.name``, e.g. ``sft_kd/at/d3c5@4x``): that
name selects the fp32 file, never a reduced-precision one. Two served models answering to one name (case-insensitive)
are refused at start-up, naming both, as is a folder with no exported model.

**Sessions.** Every model's session is opened once, at start-up, with the server's runtime and threads, run once
(:func:`warm_up`: the runtime's first-run allocations are not a scan's first slice's), and shared by all connections
(one copy of the weights per model; :mod:`compressor.export.scanner.mrd_server` on threading). Each session's
resident memory (the rise of the process's RSS while it opened and ran once) is logged at start-up;
``benchmarks/mrd_server.py`` records it for the benchmark's model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compressor import rundir
from compressor.errors import InputError
from compressor.export.exported_file import ExportMetadata, Precision, read_exported_metadata
from compressor.export.runtimes.session import ExportedModel, open_exported
from compressor.export.scanner.model_selection import ModelProfile
from compressor.export.scanner.server_stats import resident_bytes
from compressor.export.serving.triton import CONFIG_FILE, MODEL_FILE, VERSION

ONNX_SUFFIX = ".onnx"


@dataclass(frozen=True)
class ModelFile:
    """An exported file to serve, before it is opened.

    Attributes:
        name: its served name (module docstring).
        path: the ONNX file.
        origin: where it was found, in words (``"file"``, ``"exports folder X"``, ``"Triton repository X"``).
    """

    name: str
    path: Path
    origin: str


@dataclass(frozen=True)
class ServedModel:
    """A model the server serves: what it answers to and fits (:attr:`profile`), its opened session, where it was
    found and the resident memory its session took when it opened (bytes; ``None`` where unknown)."""

    profile: ModelProfile
    model: ExportedModel
    origin: str
    session_bytes: int | None = None

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def metadata(self) -> ExportMetadata:
        return self.model.metadata


def model_profile(name: str, metadata: ExportMetadata) -> ModelProfile:
    """The profile of a model served as ``name``: an fp32 export also answers to its results name."""
    results_name = metadata.origin.name if metadata.origin is not None else None
    aliases = (results_name,) if metadata.precision == Precision.FP32 and results_name not in (None, name) else ()
    lines = np.asarray(metadata.mask).any(axis=0)
    return ModelProfile(name, aliases, tuple(metadata.image_size), lines, metadata.image_channels)


def _triton_entries(folder: Path) -> list[Path]:
    return sorted(entry for entry in folder.iterdir() if (entry / VERSION / MODEL_FILE).is_file())


def find_model_files(paths: Sequence[Path]) -> list[ModelFile]:
    """The exported files of ``paths`` (module docstring), in the order given (files of a folder sorted by name);
    a path that is none of the three is an :class:`InputError` naming it."""
    found: list[ModelFile] = []
    for path in map(Path, paths):
        if path.is_file():
            found.append(ModelFile(path.stem, path, "file"))
            continue
        if not path.is_dir():
            raise InputError("no such file or folder", path)
        entries = _triton_entries(path)
        if entries:
            found += [ModelFile(entry.name, entry / VERSION / MODEL_FILE, f"Triton repository {path}")
                      for entry in entries]
            continue
        folder = rundir.RunLayout(path).exports if (path / rundir.EXPORTS_FOLDER).is_dir() else path
        files = sorted(folder.glob(f"*{ONNX_SUFFIX}"))
        if not files:
            raise InputError(f"no exported model here (no *{ONNX_SUFFIX} file, no Triton model "
                             f"<name>/{VERSION}/{MODEL_FILE} with its {CONFIG_FILE})", path)
        found += [ModelFile(file.stem, file, f"exports folder {folder}") for file in files]
    if not found:
        raise InputError("no model to serve")
    return found


def check_names(profiles: Sequence[ModelProfile], origins: Sequence[str]) -> None:
    """Refuse two served models answering to one name (case-insensitive), naming both."""
    seen: dict[str, str] = {}
    for profile, origin in zip(profiles, origins, strict=True):
        for name in profile.names:
            key = name.casefold()
            if key in seen and seen[key] != profile.name:
                raise InputError(f"two served models answer to {name!r}: {seen[key]} and {profile.name} ({origin}); "
                                 "serve one of them")
            if key in seen:
                raise InputError(f"the model {name!r} is given twice (again in {origin})")
            seen[key] = profile.name


def open_served_models(paths: Sequence[Path], provider: str = "auto", threads: int | None = None,
                       default: str | None = None) -> list[ServedModel]:
    """Find, check and open every model of ``paths`` (module docstring); ``default`` (``--default-model``) must be
    one of their names. Every problem is an :class:`InputError`, raised before any session is opened where it can
    be (names are checked from the files' metadata)."""
    files = find_model_files(paths)
    profiles = [model_profile(item.name, read_exported_metadata(item.path)) for item in files]
    check_names(profiles, [item.origin for item in files])
    if default is not None and not any(default.casefold() in {name.casefold() for name in profile.names}
                                       for profile in profiles):
        raise InputError(f"--default-model {default!r} is not a served name; served: "
                         f"{', '.join(name for profile in profiles for name in profile.names)}")
    served = []
    for item, profile in zip(files, profiles, strict=True):
        before = resident_bytes()
        model = open_exported(item.path, provider, threads)
        warm_up(model)
        after = resident_bytes()
        grown = after - before if before is not None and after is not None else None
        served.append(ServedModel(profile, model, item.origin, grown))
    return served


def warm_up(model: ExportedModel) -> None:
    """Run ``model`` once on a slice of seeded noise under its mask: the runtime's first-run allocations happen at
    start-up, not on a scan's first slice (and count in the session's resident memory)."""
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((1, *model.metadata.image_size)) + 1j * rng.standard_normal(
        (1, *model.metadata.image_size))
    model.run((noise * model.metadata.mask).astype(np.complex64), model.metadata.mask)
