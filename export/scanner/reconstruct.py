r"""Scanner-side reconstruction of a file: an exported model plus a k-space, volume or raw-scan file in, an HDF5 of
reconstructions out (``compress reconstruct``).

:func:`reconstruct_file` reads the input with its format (:mod:`compressor.export.scanner.input_formats`, ``--source``
or recognised from the file), on the model's training mask or ``mask_path``, checks it
(:mod:`compressor.export.scanner.scanner_input`: every input problem is an :class:`~compressor.errors.InputError`
raised before anything is written), runs the model in batches (:func:`reconstruct_slices`) and writes:

* the output HDF5 (:func:`reconstruction_datasets`): ``reconstruction`` ``(S, H, W)`` in the input's units, float32
  for a 1-channel model, complex64 for a 2-channel one, which also gets ``magnitude`` ``(S, H, W)`` float32, its
  absolute value; written under a temporary name and renamed when complete;
* with ``ismrmrd_out`` (a raw scan), the reconstructions as ISMRMRD images with the acquisitions' geometry, in a
  served-image convention (:mod:`compressor.export.scanner.ismrmrd_images`: the images the server sends for the same
  scan, their ``ImageComment`` naming the model file's stem and that it was named on the command line); the two
  outputs are written all or nothing (:func:`write_outputs`);
* with ``previews``, one PNG per slice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from compressor.data.mrd_header import parse_header
from compressor.errors import InputError
from compressor.export.runtimes.session import ExportedModel, open_exported
from compressor.export.scanner.image_formats import DEFAULT_IMAGE_FORMAT, bits_stored, image_format
from compressor.export.scanner.image_meta import COMMAND_LINE_REASON, model_labels
from compressor.export.scanner.input_formats import infer_source, input_format
from compressor.export.scanner.ismrmrd_images import ImageStyle, scan_images, write_ismrmrd_images
from compressor.export.scanner.scanner_input import InputRequest, ScannerInput, check_mask, check_phase, choose_mask
from compressor.io import atomic_path


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


def output_attributes(model: ExportedModel, model_path: Path, input_path: Path, source: str, mask_path: Path | None,
                      scanner_input: ScannerInput, fraction: float, takes_real_part: bool) -> dict[str, str]:
    """The output HDF5's attributes: the model's metadata (``model_<key>``, the mask left out), the input file,
    source, provider, mask and k-space provenance, the input's imaginary energy fraction and the input's notes."""
    attrs = {
        **{f"model_{key}": value for key, value in model.metadata.to_properties().items() if key != "mask"},
        "model_file": str(model_path), "input_file": str(input_path), "source": source,
        "provider": model.runtime.name, "mask": str(mask_path) if mask_path else "the model's training mask",
        "kspace": "measured" if scanner_input.measured else "simulated from the images (y = M F x)",
        "imaginary_energy_fraction": f"{fraction:.3g}",
        "took_real_part": str(takes_real_part),
        "image_channels": str(model.metadata.image_channels),
        "units": "input units (the graph's normalised image times its scale)",
    }
    if scanner_input.notes:
        attrs["notes"] = "; ".join(scanner_input.notes)
    return attrs


def image_writer(path: Path | None, scanner_input: ScannerInput, reconstruction: np.ndarray, model: ExportedModel,
                 image_format_name: str = DEFAULT_IMAGE_FORMAT) -> Callable[[], Path] | None:
    """``ismrmrd_out``: the writing of ``reconstruction`` ``(S, H, W)`` as ISMRMRD images headed by the raw scan's
    acquisitions, in the convention ``image_format_name`` (for :func:`write_outputs`); ``None`` without a path or a
    raw scan."""
    scan = scanner_input.scan
    if path is None or scan is None:
        return None
    style = ImageStyle(image_format(image_format_name), bits_stored(parse_header(scan.xml, path), path),
                       model_labels(model.path.stem, model.metadata, COMMAND_LINE_REASON))
    images = scan_images(scan, reconstruction, style)
    return lambda: write_ismrmrd_images(path, images, scan.xml)


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
    image_format_name: str = DEFAULT_IMAGE_FORMAT,
) -> ReconstructionResult:
    """Reconstruct every slice of ``input_path`` with the exported model ``model_path`` into ``out_path``.

    Args:
        source: a ``--source`` name read whole (:mod:`~compressor.export.scanner.input_formats`); ``None`` recognises
            the file (:func:`~compressor.export.scanner.input_formats.infer_source`).
        mask_path: a ``.npy`` mask ``(H, W)`` or line pattern ``(W,)``; default: the model's training mask.
        mask_centred: whether ``mask_path`` has DC at ``(H//2, W//2)``.
        kspace_centred: whether ``.npy`` k-space has DC at ``(H//2, W//2)``.
        previews: a folder for one PNG per slice.
        take_real_part: with a 1-channel model, reconstruct k-space of a complex-valued image anyway (the real part,
            as the paper does); a 2-channel model reconstructs the complex image and ignores it.
        provider: ``"auto"`` or a ``--provider`` choice (``"cpu"``, ``"cuda"``, ``"openvino"``).
        ismrmrd_out: with a raw scan (``source="ismrmrd"``), also write the reconstructions as ISMRMRD images whose
            headers come from the acquisitions.
        image_format_name: their served-image convention (:data:`~.image_formats.IMAGE_FORMATS`).

    Output HDF5 (:func:`reconstruction_datasets`), attributes :func:`output_attributes`.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    model_path, input_path, out_path = Path(model_path), Path(input_path), Path(out_path)
    chosen = input_format(source or infer_source(input_path))
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    image_format(image_format_name)  # an unknown convention is refused before any work
    model = open_exported(model_path, provider, threads)
    mask = choose_mask(model.metadata, mask_path, mask_centred)
    check_mask(mask, model.metadata, mask_path or model_path)
    if ismrmrd_out is not None and not chosen.has_acquisitions:
        raise InputError("ISMRMRD image output needs an ISMRMRD raw scan (--source ismrmrd): the image headers come "
                         "from its acquisitions", input_path)
    scanner_input = chosen.read(input_path, InputRequest.for_model(model.metadata, mask, kspace_centred))
    fraction, takes_real_part = check_phase(scanner_input.kspace, scanner_input.mask, model.metadata.image_channels,
                                            take_real_part, input_path)
    with tqdm(total=len(scanner_input.kspace), unit="slice", disable=not progress, desc=input_path.name) as bar:
        reconstruction = reconstruct_slices(model, scanner_input.kspace, scanner_input.mask, batch_size, bar.update)
    attrs = output_attributes(model, model_path, input_path, chosen.name, mask_path, scanner_input, fraction,
                              takes_real_part)
    write_images = image_writer(ismrmrd_out, scanner_input, reconstruction, model, image_format_name)
    write_outputs(out_path, reconstruction, attrs, write_images)
    written = write_previews(previews, reconstruction) if previews is not None else []
    return ReconstructionResult(out_path, len(reconstruction), model.runtime.name, time.perf_counter() - started,
                                fraction, written, ismrmrd_out if write_images is not None else None,
                                scanner_input.notes)
