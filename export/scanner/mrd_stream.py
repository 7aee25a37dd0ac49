r"""Streamed raw scans through an exported model, slice by slice: what the MRD server
(:mod:`compressor.export.scanner.mrd_server`) and the MRD v2 stdin-to-stdout filter (``compress reconstruct MODEL.onnx -
--source mrd``) share.

:class:`SliceReconstructor` holds the model and its mask and does, for one scan, what ``compress reconstruct --source
ismrmrd`` does for a file (:func:`~compressor.export.scanner.raw_input.read_raw_input`), one slice at a time:

* before any acquisition, :func:`~compressor.export.scanner.raw_input.check_grid` refuses a header whose image grid is
  not the model's image size;
* :meth:`~SliceReconstructor.reconstruct`: :func:`~compressor.export.scanner.raw_input.prepare_slice` (mask lines
  acquired, coils, partial readouts), then for a 1-channel model the phase check of ``reconstruct``
  (:func:`~compressor.export.scanner.scanner_input.check_phase`, here on the slice alone: a stream has no "whole
  input"), then the model (:func:`~compressor.export.scanner.reconstruct.reconstruct_slices`, batch 1);
* :meth:`~SliceReconstructor.image`: the ISMRMRD magnitude image with the header of
  :func:`~compressor.export.scanner.ismrmrd_images.slice_image` (series 1, ``image_index`` 1, 2, ... in the order sent).

MRD v2 (the ``mrd-python`` package): :func:`reconstruct_mrd_stream` reads a binary MRD v2 stream
(``mrd.BinaryMrdReader``: an optional ``mrd.Header``, then ``StreamItem`` s), assembles ``StreamItem.Acquisition`` s
through :func:`~compressor.data.mrd_v2.readout_from_mrd` and writes a binary MRD v2 stream (``mrd.BinaryMrdWriter``):
the input header unchanged, then one ``StreamItem.ImageFloat`` per slice as soon as it is complete (:func:`mrd_image`:
the same header fields and data as the ISMRMRD image). Other stream items (waveforms, images) are counted and not
passed on. This is the shape of the MRD v2 streaming-app convention (``mrd.tools.stream_recon``: header through,
images out). Nothing is written before the header has been checked; a problem later (a corrupt stream, a slice the
model cannot take) stops the stream without its end marker, so a reader of the output fails rather than taking a
partial scan as a whole one.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import ismrmrd
import mrd
import numpy as np

from compressor.data.mrd_header import EncodingGeometry
from compressor.data.mrd_raw import AssembledSlice, SliceAssembler, skipped_summary
from compressor.data.mrd_v2 import encoding_geometry, readout_from_mrd
from compressor.errors import InputError, first_line
from compressor.export.runtimes.session import ExportedModel, open_exported
from compressor.export.scanner.ismrmrd_images import slice_image
from compressor.export.scanner.raw_input import check_grid, prepare_slice
from compressor.export.scanner.reconstruct import reconstruct_slices
from compressor.export.scanner.scanner_input import check_mask, check_phase
from compressor.io import atomic_path

SERIES_INDEX = 1


class SliceReconstructor:
    """One exported model reconstructing streamed slices (module docstring). Thread-safe: it holds no per-scan state.

    Args:
        model: the opened model; its training mask is the mask (checked against the model once here).
        take_real_part: 1-channel models: reconstruct the real part of a complex-valued image instead of refusing it.
        parallel_runs: model runs allowed at once across threads (the server's choice, see
            :mod:`compressor.export.scanner.mrd_server`); the checks before a run are not limited.
    """

    def __init__(self, model: ExportedModel, take_real_part: bool = False, parallel_runs: int = 1):
        self.model = model
        self.mask = model.metadata.mask
        self.take_real_part = take_real_part
        self.parallel_runs = parallel_runs
        self._runs = threading.BoundedSemaphore(parallel_runs)
        check_mask(self.mask, model.metadata, model.path)

    def reconstruct(self, assembled: AssembledSlice, geometry: EncodingGeometry,
                    source: str | Path) -> tuple[np.ndarray, float]:
        """The reconstruction ``(H, W)`` of one slice in the input's units (float32 for a 1-channel model, complex64
        for a 2-channel one), and the seconds it waited for a run slot."""
        prepared = prepare_slice(assembled, geometry, self.mask, self.model.metadata, source)
        kspace = prepared.kspace[None]
        if self.model.metadata.image_channels == 1:  # a 2-channel model takes any phase: no transform to spend
            check_phase(kspace, prepared.mask, 1, self.take_real_part, source)
        waiting = time.perf_counter()
        with self._runs:
            queued = time.perf_counter() - waiting
            return reconstruct_slices(self.model, kspace, prepared.mask)[0], queued

    @staticmethod
    def image(assembled: AssembledSlice, geometry: EncodingGeometry, reconstruction: np.ndarray,
              image_index: int) -> ismrmrd.Image:
        """The ISMRMRD magnitude image of ``reconstruction`` ``(H, W)`` (``image_index`` 1-based)."""
        return slice_image(reconstruction, assembled, geometry, SERIES_INDEX, image_index)


def mrd_image(image: ismrmrd.Image) -> mrd.Image:
    """The MRD v2 image of an ISMRMRD magnitude image: the same data ``(channels, z, y, x)`` float32 (``x`` the
    readout) and header fields (``read_dir`` -> ``col_dir``, ``phase_dir`` -> ``line_dir``)."""
    head = image.getHead()
    header = mrd.ImageHeader(
        image_type=mrd.ImageType.MAGNITUDE,
        measurement_uid=int(head.measurement_uid),
        field_of_view=np.array(head.field_of_view, np.float32),
        position=np.array(head.position, np.float32),
        col_dir=np.array(head.read_dir, np.float32),
        line_dir=np.array(head.phase_dir, np.float32),
        slice_dir=np.array(head.slice_dir, np.float32),
        patient_table_position=np.array(head.patient_table_position, np.float32),
        average=int(head.average), slice=int(head.slice), contrast=int(head.contrast), phase=int(head.phase),
        repetition=int(head.repetition), set=int(head.set),
        acquisition_time_stamp=int(head.acquisition_time_stamp),
        physiology_time_stamp=[int(value) for value in head.physiology_time_stamp],
        image_index=int(head.image_index), image_series_index=int(head.image_series_index))
    return mrd.Image[np.float32](head=header, data=np.ascontiguousarray(image.data, np.float32))


@dataclass(frozen=True)
class StreamResult:
    """What :func:`reconstruct_mrd_stream` wrote: images (one per slice), the input items not used, seconds."""

    images: int
    set_aside: str
    other_items: dict[str, int]
    seconds: float


def _stream_items(items: Iterable[mrd.StreamItem], source: str | Path) -> Iterator[mrd.StreamItem]:
    """``items`` with any failure to decode the stream turned into an :class:`InputError`."""
    iterator = iter(items)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except Exception as error:  # yardl raises EOFError, ValueError, struct.error ... for a damaged stream
            raise InputError(f"the MRD v2 stream is corrupt or truncated ({first_line(error)})", source) from None
        yield item


def reconstruct_mrd_stream(model: ExportedModel, stream_in: BinaryIO, stream_out: BinaryIO, *,
                           source: str | Path = "stdin", take_real_part: bool = False) -> StreamResult:
    """Read an MRD v2 binary stream from ``stream_in``, write the header and one MRD v2 image per slice to
    ``stream_out`` (module docstring); every input problem is an :class:`InputError` naming ``source``."""
    started = time.perf_counter()
    reconstructor = SliceReconstructor(model, take_real_part)
    try:
        reader = mrd.BinaryMrdReader(stream_in)
        header = reader.read_header()
    except Exception as error:  # bad magic bytes, another schema, a stream cut short: all "not an MRD v2 stream"
        raise InputError(f"not a readable MRD v2 binary stream ({first_line(error)})", source) from None
    if header is None:
        raise InputError("the MRD v2 stream has no header: the encoding (matrix sizes, lines) is unknown", source)
    geometry = encoding_geometry(header, source)
    check_grid(geometry, model.metadata, source)
    assembler = SliceAssembler(geometry, source)
    others: Counter[str] = Counter()
    written = 0

    def images() -> Iterator[mrd.StreamItem]:
        nonlocal written
        for item in _stream_items(reader.read_data(), source):
            if not isinstance(item, mrd.StreamItem.Acquisition):
                others[type(item).__name__.removeprefix("StreamItem.")] += 1
                continue
            for assembled in assembler.add(readout_from_mrd(item.value, source)):
                written += 1
                yield _image_item(reconstructor, assembled, geometry, source, written)
        for assembled in assembler.finish():
            written += 1
            yield _image_item(reconstructor, assembled, geometry, source, written)

    writer = mrd.BinaryMrdWriter(stream_out)
    writer.write_header(header)
    writer.write_data(images())
    if written == 0:
        raise InputError(f"the stream holds no image acquisitions (set aside: "
                         f"{skipped_summary(assembler.skipped, assembler.noise_readouts) or 'nothing'})", source)
    writer.close()
    reader.close()
    return StreamResult(written, skipped_summary(assembler.skipped, assembler.noise_readouts), dict(others),
                        time.perf_counter() - started)


def _image_item(reconstructor: SliceReconstructor, assembled: AssembledSlice, geometry: EncodingGeometry,
                source: str | Path, image_index: int) -> mrd.StreamItem:
    reconstruction, _ = reconstructor.reconstruct(assembled, geometry, source)
    return mrd.StreamItem.ImageFloat(mrd_image(reconstructor.image(assembled, geometry, reconstruction, image_index)))


def reconstruct_mrd(model_path: Path, input_path: Path, out: Path | None, *, stdin: BinaryIO, stdout: BinaryIO,
                    take_real_part: bool = False, provider: str = "auto", threads: int | None = None) -> StreamResult:
    """``compress reconstruct MODEL.onnx INPUT --source mrd``: :func:`reconstruct_mrd_stream` from the file
    ``input_path`` (``-``: ``stdin``) to the file ``out`` (written atomically; ``None``: ``stdout``)."""
    model = open_exported(model_path, provider, threads)
    from_stdin = str(input_path) == "-"
    if not from_stdin and not Path(input_path).is_file():
        raise InputError("input file not found", input_path)
    source = "standard input" if from_stdin else input_path
    with contextlib.ExitStack() as stack:
        stream_in = stdin if from_stdin else stack.enter_context(open(input_path, "rb"))
        if out is None:
            return reconstruct_mrd_stream(model, stream_in, stdout, source=source, take_real_part=take_real_part)
        temporary = stack.enter_context(atomic_path(out))
        with open(temporary, "wb") as stream_out:
            return reconstruct_mrd_stream(model, stream_in, stream_out, source=source, take_real_part=take_real_part)
