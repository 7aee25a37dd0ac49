r"""ISMRMRD raw scans into an exported model: one assembled slice -> the single-coil k-space and mask the graph takes.

:func:`prepare_slice` is shared by ``compress reconstruct --source ismrmrd`` (:func:`read_raw_input`, a whole file)
and the MRD streaming server (one slice at a time). For a slice assembled by
:class:`~compressor.data.mrd_raw.SliceAssembler` (uncentred ``(coils, H, W)`` k-space on the tool's grid):

* the grid ``(H, W)`` (readout after oversampling removal, encoded phase-encode lines) must be the model's
  ``image_size``; k-space cannot be cropped or padded without changing what was measured;
* the **mask** is the model's (its training mask, or ``--mask``). Every line it samples must have been acquired;
  the missing ones are an :class:`InputError` listing them as ``kspace_encode_step_1`` counts them (centred:
  ``step1 = column - W // 2 + center`` with the header's ``kspace_encoding_step_1.center``). Lines acquired but not
  in the mask are set to zero and counted: the model was trained for its mask;
* a **partially sampled readout** (asymmetric echo, discarded samples) cannot go through a ``"lines"`` graph, whose
  data fidelity assumes whole lines; a ``"dft"`` graph takes the 2-D mask ``mask * readout_sampled`` (the positions
  never measured are outside it);
* **coils**: a 2-channel model gets one virtual coil of the masked k-space,
  :func:`~compressor.data.coils.masked_virtual_coil` (which :mod:`compressor.data.coil_simulation` trains through;
  as :func:`~compressor.export.scanner.scanner_input.compress_coils`: compression commutes with the Fourier
  transform; computed from the samples the model sees, so nothing outside the mask changes its input). A 1-channel
  model takes single-coil data only, and the caller runs the real-image check
  (:func:`~compressor.export.scanner.scanner_input.check_phase`) on the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compressor.data.coils import masked_virtual_coil
from compressor.data.ismrmrd_file import RawScan, read_ismrmrd_file
from compressor.data.mrd_header import EncodingGeometry
from compressor.data.mrd_raw import AssembledSlice, skipped_summary
from compressor.errors import InputError
from compressor.export.exported_file import ExportMetadata
from compressor.export.scanner.scanner_input import MULTI_COIL_MESSAGE, ScannerInput

DFT_HINT = "export the model with `compress export --formulation dft`, whose data fidelity takes any 2-D mask"


@dataclass(frozen=True)
class PreparedSlice:
    """What the graph takes for one slice.

    Attributes:
        kspace: ``(H, W)`` complex64, uncentred, one (virtual) coil, zero outside ``mask``.
        mask: ``(H, W)`` float32 0/1, uncentred: the model's mask (times ``readout_sampled`` for a partial readout).
        lines_outside_mask: acquired lines the mask does not sample (set to zero).
    """

    kspace: np.ndarray
    mask: np.ndarray
    lines_outside_mask: int


def step1_of_columns(columns: np.ndarray, geometry: EncodingGeometry) -> list[int]:
    """The ``kspace_encode_step_1`` counters of uncentred columns ``(n,)`` (index 0 = the centre line)."""
    width = geometry.encoded_matrix[1]
    centred = (np.asarray(columns) + width // 2) % width
    return [int(column) - width // 2 + geometry.step1_center for column in centred]


def check_grid(geometry: EncodingGeometry, metadata: ExportMetadata, source: str | Path) -> None:
    """Refuse a scan whose image grid (readout after oversampling removal x phase-encode lines,
    :attr:`~compressor.data.mrd_header.EncodingGeometry.image_shape`) is not the model's ``image_size``: k-space
    cannot be cropped or padded without changing what was measured. The header alone decides it, so a server can
    refuse a scan before its first acquisition."""
    height, width = geometry.image_shape
    if (height, width) != tuple(metadata.image_size):
        raise InputError(f"the scan's image grid is {height}x{width} (readout after oversampling removal x "
                         f"phase-encode lines) but the model was exported for {metadata.image_size[0]}x"
                         f"{metadata.image_size[1]} images", source)


def prepare_slice(assembled: AssembledSlice, geometry: EncodingGeometry, mask: np.ndarray,
                  metadata: ExportMetadata, source: str | Path) -> PreparedSlice:
    """The single-coil undersampled k-space and mask of one assembled slice (module docstring); every problem is an
    :class:`InputError` naming ``source``.

    Args:
        assembled: ``kspace`` ``(coils, H, W)`` uncentred, ``acquired_lines`` ``(W,)``, ``readout_sampled`` ``(H,)``.
        geometry: the scan's encoding (for the ``kspace_encode_step_1`` numbering of missing lines).
        mask: ``(H, W)`` 0/1 uncentred, the model's mask (training mask or ``--mask``), already checked to suit it.
        metadata: the exported model's (image size, formulation, image channels).
    """
    coils, height = assembled.kspace.shape[:2]
    check_grid(geometry, metadata, source)
    if not np.isfinite(assembled.kspace).all():
        raise InputError(f"k-space of slice {tuple(assembled.key)} contains NaN or Inf", source)
    if metadata.image_channels != 2 and coils > 1:
        raise InputError(f"{MULTI_COIL_MESSAGE} (the scan has {coils} coils)", source)
    sampled_lines = np.asarray(mask).any(axis=0)
    missing = np.flatnonzero(sampled_lines & ~assembled.acquired_lines)
    if missing.size:
        raise InputError(f"the model's mask samples {missing.size} lines the scan did not acquire: "
                         f"kspace_encode_step_1 {', '.join(map(str, sorted(step1_of_columns(missing, geometry))))} "
                         f"(centre line {geometry.step1_center})", source)
    graph_mask = np.asarray(mask, np.float32)
    if not assembled.readout_sampled.all():
        if metadata.formulation == "lines":
            raise InputError(f"the readouts are partial ({int((~assembled.readout_sampled).sum())} of {height} "
                             "samples not acquired: asymmetric echo or discarded samples), which the model's 'lines' "
                             f"data-fidelity graph cannot take; {DFT_HINT}", source)
        graph_mask = graph_mask * assembled.readout_sampled[:, None]
    if metadata.image_channels == 2:
        kspace = masked_virtual_coil(assembled.kspace, graph_mask)[0]
    else:
        kspace = (assembled.kspace * graph_mask)[0]
    outside = int(np.sum(assembled.acquired_lines & ~sampled_lines))
    return PreparedSlice(kspace.astype(np.complex64), graph_mask.astype(np.float32), outside)


def raw_notes(scan: RawScan, lines_outside_mask: int) -> tuple[str, ...]:
    """What the user should know about a raw scan read for a model: acquisitions set aside, lines zeroed."""
    notes = []
    summary = skipped_summary(scan.skipped, scan.noise_readouts)
    if summary:
        notes.append(f"acquisitions that are not image data: {summary}")
    if lines_outside_mask:
        notes.append(f"{lines_outside_mask} acquired lines outside the model's mask set to zero (summed over slices)")
    return tuple(notes)


def read_raw_input(path: Path, metadata: ExportMetadata, mask: np.ndarray, group: str = "dataset") -> ScannerInput:
    """Read an ISMRMRD file (:func:`~compressor.data.ismrmrd_file.read_ismrmrd_file`) and prepare every slice
    (:func:`prepare_slice`) into the graph's input (one mask for all slices, :attr:`ScannerInput.scan` the assembled
    scan); slices whose masks differ (readouts sampled differently) are refused."""
    scan = read_ismrmrd_file(path, group, accept=lambda geometry: check_grid(geometry, metadata, path))
    prepared = [prepare_slice(assembled, scan.geometry, mask, metadata, path) for assembled in scan.slices]
    for item, assembled in zip(prepared, scan.slices, strict=True):
        if not np.array_equal(item.mask, prepared[0].mask):
            raise InputError(f"slice {tuple(assembled.key)} sampled other readout positions than slice "
                             f"{tuple(scan.slices[0].key)}; one mask must serve every slice", path)
    kspace = np.stack([item.kspace for item in prepared])
    notes = raw_notes(scan, sum(item.lines_outside_mask for item in prepared))
    return ScannerInput(kspace, prepared[0].mask, measured=True, notes=notes, scan=scan)
