r"""Scanner-side reconstruction: an exported model plus a k-space or image file in, an HDF5 of reconstructions out.

Inputs (``source``):

* ``npy``: measured k-space ``(S, H, W)`` or ``(H, W)``, complex, **already undersampled**, uncentred unless
  ``kspace_centred``; every sample outside the mask must be zero (else the mask does not fit the data). Multi-coil
  k-space ``(S, coils, H, W)`` takes a 2-channel model: each slice's coils are compressed to one virtual coil
  (:func:`compressor.data.coils.virtual_coil`), which is complex whatever the object;
* ``project``, ``authors``: this tool's HDF5 or the authors' HDF5 (:mod:`compressor.data.readers`); stored fully
  sampled k-space is undersampled with the mask, stored undersampled k-space is used as is;
* ``fastmri``, ``nifti``, and ``project`` files without k-space: images, whose measurement is simulated,
  ``y = M ⊙ F(x)``;
* ``ismrmrd``: an ISMRMRD raw scan (:mod:`compressor.export.scanner.raw_input`): its acquisitions assembled per slice,
  coils compressed, the lines the mask samples must have been acquired; ``ismrmrd_out`` also writes the
  reconstructions as ISMRMRD images with the acquisitions' geometry (:mod:`compressor.export.scanner.ismrmrd_images`);
  the two
  outputs are written all or nothing (:func:`write_outputs`).

:data:`SOURCES` are the files :func:`read_input` reads; :data:`RAW_SOURCES` the raw scans read elsewhere (``ismrmrd``
by :func:`reconstruct_file`, ``mrd`` streams by :mod:`compressor.export.scanner.mrd_stream`); the CLI's choices are
both.

For a 2-channel model the readers are opened with ``keep_phase=True``: sources that carry phase give the complex
image and its k-space on the measured grid (multi-coil fastMRI compressed to one virtual coil).

The mask is ``mask_path`` when given, else the training mask recorded in the model. Every input problem (model
exported for another image size or acceleration, a mask that does not fit the model or the data, NaN/Inf in
k-space, a complex-valued image for a real-valued model, multi-coil data for a real-valued model) is an
:class:`~compressor.errors.InputError` raised before anything is written; the output HDF5 is written under a
temporary name and renamed when complete. Measured k-space must be zero outside the mask and non-zero somewhere on
every sampled position (else it was undersampled with another, or sparser, mask).

Output (:func:`reconstruction_datasets`): ``reconstruction`` ``(S, H, W)`` in the input's units, float32 for a
1-channel model, complex64 for a 2-channel one, which also gets ``magnitude`` ``(S, H, W)`` float32, its absolute value.

Complex-valued images and 1-channel models: those models are real-valued (the DF keeps ``Re``), so k-space measured
from an image with a phase cannot be reconstructed faithfully by them. A real image has Hermitian k-space,
``y(-k) = conj(y(k))``; on the frequencies sampled together with their mirror (``M(k) M(-k) = 1``) the zero-filled
image is then exactly real. :func:`imaginary_energy_fraction` measures ``||Im x_s||^2 / ||x_s||^2`` for
``x_s = F^{-1}(M(k) M(-k) y)`` over the whole input; above :data:`COMPLEX_IMAGE_THRESHOLD` (1 %) the input is refused
unless the caller asks to take the real part, which is what the paper's pipeline does (the graph keeps ``Re`` of every
inverse transform). A 2-channel model reconstructs the complex image and needs no such check.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from compressor.data.coils import virtual_coil
from compressor.data.readers import VOLUME_SOURCES, SliceData, open_volume
from compressor.errors import InputError
from compressor.export.exported_file import ExportMetadata
from compressor.export.runtimes.session import ExportedModel, open_exported
from compressor.export.targets.export import simulated_kspace
from compressor.io import atomic_path
from compressor.masks import is_whole_lines, load_mask

COMPLEX_IMAGE_THRESHOLD = 0.01
ACCELERATION_TOLERANCE = 0.1
SOURCES = ("npy", *VOLUME_SOURCES.names())
RAW_SOURCES = ("ismrmrd", "mrd")
RECONSTRUCT_SOURCES = (*SOURCES, *RAW_SOURCES)
SUFFIX_SOURCES = {".npy": "npy", ".nii": "nifti", ".nii.gz": "nifti", ".h5": "project", ".hdf5": "project"}
ISMRMRD_DATASETS = ("dataset/xml", "dataset/data")  # what ismrmrd.Dataset writes, and no project file has


@dataclass(frozen=True)
class ScannerInput:
    """Undersampled k-space ready for the graph.

    Attributes:
        kspace: ``(S, H, W)`` complex64, uncentred, zero outside ``mask``.
        mask: ``(H, W)`` float32 0/1, uncentred.
        measured: ``True`` when the k-space came from the file (``npy``, stored k-space), ``False`` when it was
            simulated from images.
    """

    kspace: np.ndarray
    mask: np.ndarray
    measured: bool


@dataclass(frozen=True)
class ReconstructionResult:
    """What :func:`reconstruct_file` wrote."""

    path: Path
    slices: int
    provider: str
    seconds: float
    imaginary_fraction: float
    previews: list[Path]
    ismrmrd_images: Path | None = None
    notes: tuple[str, ...] = ()


def infer_source(path: Path) -> str:
    """The input source from the file name: ``.npy`` k-space, ``.nii``/``.nii.gz`` NIfTI, ``.h5``/``.hdf5`` project
    HDF5, except an HDF5 file holding ``/dataset/xml`` and ``/dataset/data``, an ISMRMRD raw scan (``ismrmrd``). A
    file that cannot be opened is left to its reader's message."""
    for suffix, source in SUFFIX_SOURCES.items():
        if path.name.lower().endswith(suffix):
            return "ismrmrd" if source == "project" and _is_ismrmrd(path) else source
    raise InputError(f"cannot tell the source from the file name; pass --source ({', '.join(SOURCES)}, ismrmrd)",
                     path)


def _is_ismrmrd(path: Path) -> bool:
    """Whether ``path`` is an HDF5 file with the datasets of an ISMRMRD raw scan (:data:`ISMRMRD_DATASETS`)."""
    try:
        with h5py.File(path, "r") as file:
            return all(name in file for name in ISMRMRD_DATASETS)
    except OSError:  # missing or not HDF5: the project reader says so
        return False


def mirror(values: np.ndarray) -> np.ndarray:
    """``a(-k)`` for uncentred arrays over the last two axes: index ``k -> (-k) mod N`` on each."""
    return np.roll(np.flip(values, axis=(-2, -1)), shift=(1, 1), axis=(-2, -1))


def imaginary_energy_fraction(kspace: np.ndarray, mask: np.ndarray) -> float:
    """``||Im x_s||^2 / ||x_s||^2`` with ``x_s = F^{-1}(M(k) M(-k) y)`` over all slices (0 for real images).

    Args:
        kspace: ``(S, H, W)`` complex, uncentred, undersampled with ``mask``.
        mask: ``(H, W)`` 0/1, uncentred.
    """
    symmetric = mask * mirror(mask)
    image = np.fft.ifft2(kspace * symmetric, norm="ortho")
    total = float(np.sum(np.abs(image) ** 2))
    return float(np.sum(image.imag ** 2)) / total if total > 0 else 0.0


MULTI_COIL_MESSAGE = "multi-coil data needs a 2-channel model: coil compression gives a complex virtual coil"


def read_npy_kspace(path: Path, centred: bool) -> np.ndarray:
    """Complex k-space ``(S, H, W)`` (an ``(H, W)`` array is one slice) or multi-coil ``(S, coils, H, W)``, converted
    to uncentred."""
    try:
        values = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise InputError(f"not a readable .npy array ({error.__class__.__name__}: {error})", path) from None
    if values.ndim == 2:
        values = values[None]
    if values.ndim not in (3, 4):
        raise InputError(f"k-space must be (S, H, W), (H, W) or multi-coil (S, coils, H, W), got shape {values.shape}",
                         path)
    if values.dtype.kind != "c":
        raise InputError(f"k-space must be complex, got dtype {values.dtype}", path)
    if values.size == 0:
        raise InputError(f"k-space is empty (shape {values.shape})", path)
    values = values.astype(np.complex64)
    return np.fft.ifftshift(values, axes=(-2, -1)) if centred else values


def compress_coils(kspace: np.ndarray) -> np.ndarray:
    """One virtual coil per slice: multi-coil k-space ``(S, coils, H, W)`` -> ``(S, H, W)`` complex64.

    :func:`~compressor.data.coils.virtual_coil` is applied to each slice's k-space directly: the Fourier transform is
    unitary along the pixels, so the coil k-space matrix has the coil images' left singular vectors (the same
    compression vector) and compressing commutes with the transform; samples outside the mask stay exactly zero.
    """
    return np.stack([virtual_coil(coils) for coils in kspace])


def check_finite(kspace: np.ndarray, path: Path) -> None:
    """Refuse k-space ``(S, ...)`` with NaN or Inf, naming the file and the first such slice."""
    finite = np.isfinite(kspace).reshape(len(kspace), -1).all(axis=1)
    if not finite.all():
        raise InputError(f"k-space of slice {int(np.argmin(finite))} contains NaN or Inf", path)


def _volume_kspace(slices: list[SliceData], mask: np.ndarray) -> tuple[np.ndarray, bool]:
    """A volume's slices as undersampled k-space ``(S, H, W)`` and whether it was measured: stored k-space is
    masked (or kept, if already undersampled); images-only volumes (real, or complex with ``keep_phase``) have their
    measurement simulated."""
    if slices[0].kspace is None:
        return simulated_kspace(np.stack([data.target for data in slices]), mask), False
    stored = np.stack([data.kspace for data in slices]).astype(np.complex64)
    return (stored if slices[0].kspace_undersampled else stored * mask), True


def choose_mask(metadata: ExportMetadata, mask_path: Path | None, mask_centred: bool) -> np.ndarray:
    """The mask to use: ``mask_path`` (validated to fit the model's image size) or the model's training mask."""
    if mask_path is None:
        return metadata.mask
    return load_mask(mask_path, metadata.image_size, centred=mask_centred).values


def check_mask(mask: np.ndarray, metadata: ExportMetadata, source: Path | str) -> None:
    """The mask must suit the graph (whole lines for ``"lines"``) and the model's acceleration (±10 %)."""
    if metadata.formulation == "lines" and not is_whole_lines(mask, metadata.line_axis):
        direction = "columns" if metadata.line_axis == -1 else "rows"
        raise InputError(f"mask is not made of whole {direction}, which this model's data-fidelity graph needs",
                         source)
    if metadata.acceleration:
        acceleration = mask.size / max(float(mask.sum()), 1.0)
        if abs(acceleration - metadata.acceleration) > ACCELERATION_TOLERANCE * metadata.acceleration:
            raise InputError(f"mask samples 1/{acceleration:.2f} of k-space but the model was trained for "
                             f"{metadata.acceleration:g}x", source)


def read_input(path: Path, source: str, image_size: tuple[int, int], mask: np.ndarray,
               acceleration: float | None = None, kspace_centred: bool = False,
               image_channels: int = 1) -> ScannerInput:
    """Read ``path`` as undersampled k-space of ``image_size`` slices; every input problem is an
    :class:`InputError` naming the file.

    Args:
        source: one of :data:`SOURCES`.
        image_size: ``(H, W)`` the model takes (slices are never cropped: k-space cannot be).
        mask: ``(H, W)`` 0/1 uncentred mask that undersamples (or undersampled) the data.
        acceleration: for the ``authors`` source, which ``kspace_volus_<R>x`` to read.
        kspace_centred: whether ``.npy`` k-space has DC at ``(H//2, W//2)``.
        image_channels: the model's (1 real, 2 complex): 2 opens the readers with ``keep_phase`` and compresses
            multi-coil ``.npy`` k-space to one virtual coil; 1 refuses multi-coil k-space.
    """
    if not path.is_file():
        raise InputError("input file not found", path)
    if source not in SOURCES:
        raise InputError(f"unknown source {source!r}; valid: {', '.join(SOURCES)}")
    if source == "npy":
        kspace, measured = read_npy_kspace(path, kspace_centred), True
        check_finite(kspace, path)
        if kspace.ndim == 4:
            if image_channels != 2:
                raise InputError(MULTI_COIL_MESSAGE, path)
            kspace = compress_coils(kspace)
    else:
        options = {"acceleration": acceleration} if source == "authors" else {}
        if source == "fastmri" and image_channels == 2:  # the readout oversampling cropped to the model's rows
            options["recon_size"] = tuple(image_size)
        reader = open_volume(path, source, keep_phase=image_channels == 2, **options)
        if len(reader) == 0:
            raise InputError("the volume has no slices", path)
        if reader.image_shape != tuple(image_size):
            raise InputError(_size_message(reader.image_shape, image_size), path)
        kspace, measured = _volume_kspace([reader.read_slice(i) for i in range(len(reader))], mask)
        check_finite(kspace, path)
    if kspace.shape[1:] != tuple(image_size):
        raise InputError(_size_message(kspace.shape[1:], image_size), path)
    if np.any(kspace[:, mask == 0] != 0):
        raise InputError("k-space has samples where the mask has none: it was undersampled with another mask or "
                         "centring (see --mask, --mask-centred, --centred)", path)
    never_measured = np.all(kspace[:, mask != 0] == 0, axis=0)
    if never_measured.any() and np.any(kspace != 0):
        raise InputError(f"k-space is exactly zero in every slice at {int(never_measured.sum())} of the mask's "
                         f"{never_measured.size} samples: it was undersampled with a sparser mask (another "
                         "acceleration? see --mask)", path)
    return ScannerInput(kspace, mask, measured)


def _size_message(shape: tuple[int, ...], image_size: tuple[int, int]) -> str:
    return (f"slices are {shape[0]}x{shape[1]} but the model was exported for {image_size[0]}x{image_size[1]} "
            "images")


def check_phase(kspace: np.ndarray, mask: np.ndarray, image_channels: int, take_real_part: bool,
                source: Path | str) -> tuple[float, bool]:
    """The input's :func:`imaginary_energy_fraction` and whether a 1-channel model takes the real part of a
    complex-valued image (above :data:`COMPLEX_IMAGE_THRESHOLD`), which it does only if ``take_real_part``, else
    :class:`InputError`; a 2-channel model takes any image.

    Args:
        kspace: ``(S, H, W)`` complex, uncentred, undersampled with ``mask`` ``(H, W)``.
    """
    fraction = imaginary_energy_fraction(kspace, mask)
    takes_real_part = fraction > COMPLEX_IMAGE_THRESHOLD and image_channels != 2
    if takes_real_part and not take_real_part:
        raise InputError(f"k-space is of a complex-valued image ({fraction:.1%} of the energy is imaginary, "
                         f"threshold {COMPLEX_IMAGE_THRESHOLD:.0%}); the real-valued model cannot reconstruct it "
                         "faithfully (pass --take-real-part to reconstruct the real part)", source)
    return fraction, takes_real_part


def reconstruct_slices(model: ExportedModel, kspace: np.ndarray, mask: np.ndarray, batch_size: int = 8,
                       on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Reconstruct ``(S, H, W)`` k-space in batches; returns ``(S, H, W)`` in the input's units: float32 for a
    1-channel model, complex64 for a 2-channel one (:meth:`~compressor.export.runtimes.session.ExportedModel.run`)."""
    outputs = []
    for start in range(0, len(kspace), batch_size):
        image, scale = model.run(kspace[start:start + batch_size], mask)
        outputs.append(image * scale[:, None, None])
        if on_batch is not None:
            on_batch(len(image))
    return np.concatenate(outputs)


def reconstruction_datasets(reconstruction: np.ndarray) -> dict[str, np.ndarray]:
    """The datasets of the output HDF5: ``reconstruction`` as given (float32 real, or complex64) and, for a complex
    one, ``magnitude`` float32, its absolute value."""
    if not np.iscomplexobj(reconstruction):
        return {"reconstruction": reconstruction.astype(np.float32)}
    return {"reconstruction": reconstruction.astype(np.complex64),
            "magnitude": np.abs(reconstruction).astype(np.float32)}


def write_reconstructions(path: Path, reconstruction: np.ndarray, attrs: dict[str, str]) -> Path:
    """Write :func:`reconstruction_datasets` of ``reconstruction`` ``(S, H, W)`` and ``attrs`` to an HDF5 file,
    atomically."""
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as file:
        for name, values in reconstruction_datasets(reconstruction).items():
            file.create_dataset(name, data=values, compression="gzip")
        for key, value in attrs.items():
            file.attrs[key] = value
    return path


def write_outputs(path: Path, reconstruction: np.ndarray, attrs: dict[str, str],
                  write_second: Callable[[], Path] | None = None) -> Path:
    """:func:`write_reconstructions` to ``path`` and, if given, ``write_second()`` (itself atomic, e.g. the ISMRMRD
    images), all or nothing: the HDF5 is written under its temporary name first, then the second file, then the HDF5
    is renamed (in its own folder, the one step after the second file is in place); if either write fails, the staged
    HDF5 is removed, so neither output appears."""
    if write_second is None:
        return write_reconstructions(path, reconstruction, attrs)
    with atomic_path(path) as staged:
        write_reconstructions(staged, reconstruction, attrs)
        write_second()
    return path


def write_previews(folder: Path, reconstruction: np.ndarray) -> list[Path]:
    """One grey-scale PNG per slice, ``slice_0000.png`` ..., each written atomically (the magnitude of a complex
    reconstruction)."""
    from matplotlib.image import imsave

    written = []
    for index, image in enumerate(reconstruction):
        path = folder / f"slice_{index:04d}.png"
        with atomic_path(path) as temporary:
            imsave(temporary, np.abs(image) if np.iscomplexobj(image) else image, cmap="gray", format="png")
        written.append(path)
    return written


def reconstruct_file(
    model_path: Path,
    input_path: Path,
    out_path: Path,
    *,
    source: str | None = None,
    mask_path: Path | None = None,
    mask_centred: bool = False,
    kspace_centred: bool = False,
    batch_size: int = 8,
    previews: Path | None = None,
    take_real_part: bool = False,
    provider: str = "auto",
    threads: int | None = None,
    progress: bool = True,
    ismrmrd_out: Path | None = None,
) -> ReconstructionResult:
    """Reconstruct every slice of ``input_path`` with the exported model ``model_path`` into ``out_path``.

    Args:
        source: one of :data:`SOURCES` or ``"ismrmrd"``; ``None`` infers it from the file (:func:`infer_source`).
        mask_path: a ``.npy`` mask ``(H, W)`` or line pattern ``(W,)``; default: the model's training mask.
        mask_centred: whether ``mask_path`` has DC at ``(H//2, W//2)``.
        kspace_centred: whether ``.npy`` k-space has DC at ``(H//2, W//2)``.
        previews: a folder for one PNG per slice.
        take_real_part: with a 1-channel model, reconstruct k-space of a complex-valued image anyway (the real part,
            as the paper does); a 2-channel model reconstructs the complex image and ignores it.
        provider: ``"auto"`` or a ``--provider`` choice (``"cpu"``, ``"cuda"``, ``"openvino"``).
        ismrmrd_out: with ``source="ismrmrd"``, also write the reconstructions as ISMRMRD magnitude images whose
            headers come from the acquisitions (:mod:`compressor.export.scanner.ismrmrd_images`).

    Output HDF5 (:func:`reconstruction_datasets`): ``reconstruction`` ``(S, H, W)`` in the input's units, float32
    (1-channel model) or complex64 (2-channel model, with ``magnitude`` float32); attributes: the model's metadata,
    the input file, source, provider and the input's imaginary energy fraction.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    model_path, input_path, out_path = Path(model_path), Path(input_path), Path(out_path)
    source = source or infer_source(input_path)
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    model = open_exported(model_path, provider, threads)
    mask = choose_mask(model.metadata, mask_path, mask_centred)
    check_mask(mask, model.metadata, mask_path or model_path)
    metadata = model.metadata
    raw_input = None
    if source == "ismrmrd":
        # imported here: mrd_reconstruct builds on this module, and ismrmrd is loaded only for raw scans
        from compressor.export.scanner.ismrmrd_images import write_ismrmrd_images
        from compressor.export.scanner.raw_input import read_raw_input

        raw_input = read_raw_input(input_path, metadata, mask)
        scanner_input = raw_input.scanner_input
    elif ismrmrd_out is not None:
        raise InputError("ISMRMRD image output needs an ISMRMRD raw scan (--source ismrmrd): the image headers come "
                         "from its acquisitions", input_path)
    else:
        scanner_input = read_input(input_path, source, metadata.image_size, mask, metadata.acceleration,
                                   kspace_centred, metadata.image_channels)
    fraction, takes_real_part = check_phase(scanner_input.kspace, scanner_input.mask, metadata.image_channels,
                                            take_real_part, input_path)
    with tqdm(total=len(scanner_input.kspace), unit="slice", disable=not progress, desc=input_path.name) as bar:
        reconstruction = reconstruct_slices(model, scanner_input.kspace, scanner_input.mask, batch_size, bar.update)
    attrs = {
        **{f"model_{key}": value for key, value in model.metadata.to_properties().items() if key != "mask"},
        "model_file": str(model_path), "input_file": str(input_path), "source": source,
        "provider": model.runtime.name, "mask": str(mask_path) if mask_path else "the model's training mask",
        "kspace": "measured" if scanner_input.measured else "simulated from the images (y = M F x)",
        "imaginary_energy_fraction": f"{fraction:.3g}",
        "took_real_part": str(takes_real_part),
        "image_channels": str(metadata.image_channels),
        "units": "input units (the graph's normalised image times its scale)",
    }
    notes = raw_input.notes() if raw_input is not None else []
    if notes:
        attrs["notes"] = "; ".join(notes)
    images = raw_input.images(reconstruction) if raw_input is not None and ismrmrd_out is not None else None
    write_outputs(out_path, reconstruction, attrs,
                  None if images is None else lambda: write_ismrmrd_images(ismrmrd_out, images, raw_input.scan.xml))
    written = write_previews(previews, reconstruction) if previews is not None else []
    return ReconstructionResult(out_path, len(reconstruction), model.runtime.name, time.perf_counter() - started,
                                fraction, written, ismrmrd_out if images is not None else None, tuple(notes))
