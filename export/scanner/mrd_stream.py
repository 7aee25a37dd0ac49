r"""The MRD v2 stdin-to-stdout filter: ``compress reconstruct MODEL.onnx - --source mrd``.

MRD v2 (the ``mrd-python`` package): :func:`reconstruct_mrd_stream` reads a binary MRD v2 stream
(``mrd.BinaryMrdReader``: an optional ``mrd.Header``, then ``StreamItem`` s), assembles ``StreamItem.Acquisition`` s
through :func:`~compressor.data.mrd_v2.readout_from_mrd` and writes a binary MRD v2 stream (``mrd.BinaryMrdWriter``):
the input header unchanged, then one image per slice as soon as it is complete: the ISMRMRD image the server sends
and ``--ismrmrd-out`` writes (:func:`~compressor.export.scanner.ismrmrd_images.slice_image`, same convention, header
fields, series and MetaContainer) converted by :func:`mrd_image` (``StreamItem.ImageInt16`` / ``ImageUint16`` for
16-bit magnitude, ``ImageFloat``, ``ImageComplexFloat``; the MetaContainer becomes the image's ``meta``, every value
a string). Other stream items (waveforms, images) are counted and not passed on. This is the shape of the MRD v2
streaming-app convention (``mrd.tools.stream_recon``: header through, images out). Nothing is written before the
header has been checked; a problem later (a corrupt stream, a slice the model cannot take) stops the stream without
its end marker, so a reader of the output fails rather than taking a partial scan as a whole one.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import ismrmrd
import mrd
import numpy as np

from compressor.data.mrd_raw import AssembledSlice, SliceAssembler, skipped_summary
from compressor.data.mrd_v2 import encoding_geometry, ismrmrd_header, readout_from_mrd
from compressor.errors import InputError, first_line
from compressor.export.runtimes.session import ExportedModel, open_exported
from compressor.export.scanner.image_formats import DEFAULT_IMAGE_FORMAT, bits_stored, image_format
from compressor.export.scanner.image_meta import COMMAND_LINE_REASON, model_labels
from compressor.export.scanner.ismrmrd_images import ImageStyle, SeriesNumbering, slice_image
from compressor.export.scanner.raw_input import check_grid
from compressor.export.scanner.slice_reconstruction import SliceReconstructor
from compressor.io import atomic_path

STREAM_ITEMS = {np.dtype(np.int16): mrd.StreamItem.ImageInt16, np.dtype(np.uint16): mrd.StreamItem.ImageUint16,
                np.dtype(np.float32): mrd.StreamItem.ImageFloat,
                np.dtype(np.complex64): mrd.StreamItem.ImageComplexFloat}
IMAGE_TYPES = {ismrmrd.IMTYPE_MAGNITUDE: mrd.ImageType.MAGNITUDE, ismrmrd.IMTYPE_COMPLEX: mrd.ImageType.COMPLEX}


def mrd_image(image: ismrmrd.Image) -> mrd.StreamItem:
    """The MRD v2 stream item of an ISMRMRD image: the same data ``(channels, z, y, x)`` (``x`` the readout) and
    dtype, header fields (``read_dir`` -> ``col_dir``, ``phase_dir`` -> ``line_dir``) and MetaContainer (``meta``,
    each value a list of strings)."""
    head = image.getHead()
    header = mrd.ImageHeader(
        image_type=IMAGE_TYPES[head.image_type],
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
    meta = {name: [mrd.ImageMetaValue.String(str(value)) for value in (values if isinstance(values, list)
                                                                        else [values])]
            for name, values in image.meta.items()}
    item = STREAM_ITEMS[image.data.dtype]
    return item(mrd.Image[image.data.dtype.type](head=header, data=np.ascontiguousarray(image.data), meta=meta))


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
                           source: str | Path = "stdin", take_real_part: bool = False,
                           image_format_name: str = DEFAULT_IMAGE_FORMAT) -> StreamResult:
    """Read an MRD v2 binary stream from ``stream_in``, write the header and one MRD v2 image per slice to
    ``stream_out`` in the served-image convention ``image_format_name`` (module docstring); every input problem is an
    :class:`InputError` naming ``source``."""
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
    style = ImageStyle(image_format(image_format_name), bits_stored(ismrmrd_header(header), source),
                       model_labels(model.path.stem, model.metadata, COMMAND_LINE_REASON))
    assembler = SliceAssembler(geometry, source)
    numbering = SeriesNumbering()
    others: Counter[str] = Counter()
    written = 0

    def image_item(assembled: AssembledSlice) -> mrd.StreamItem:
        nonlocal written
        written += 1
        result = reconstructor.reconstruct(assembled, geometry, source)
        return mrd_image(slice_image(result.reconstruction, assembled, geometry, *numbering.next(assembled.key),
                                     style))

    def images() -> Iterator[mrd.StreamItem]:
        for item in _stream_items(reader.read_data(), source):
            if not isinstance(item, mrd.StreamItem.Acquisition):
                others[type(item).__name__.removeprefix("StreamItem.")] += 1
                continue
            for assembled in assembler.add(readout_from_mrd(item.value, source)):
                yield image_item(assembled)
        for assembled in assembler.finish():
            yield image_item(assembled)

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


def reconstruct_mrd(model_path: Path, input_path: Path, out: Path | None, *, stdin: BinaryIO, stdout: BinaryIO,
                    take_real_part: bool = False, provider: str = "auto", threads: int | None = None,
                    image_format_name: str = DEFAULT_IMAGE_FORMAT) -> StreamResult:
    """``compress reconstruct MODEL.onnx INPUT --source mrd``: :func:`reconstruct_mrd_stream` from the file
    ``input_path`` (``-``: ``stdin``) to the file ``out`` (written atomically; ``None``: ``stdout``)."""
    model = open_exported(model_path, provider, threads)
    from_stdin = str(input_path) == "-"
    if not from_stdin and not Path(input_path).is_file():
        raise InputError("input file not found", input_path)
    source = "standard input" if from_stdin else input_path
    options = {"source": source, "take_real_part": take_real_part, "image_format_name": image_format_name}
    with contextlib.ExitStack() as stack:
        stream_in = stdin if from_stdin else stack.enter_context(open(input_path, "rb"))
        if out is None:
            return reconstruct_mrd_stream(model, stream_in, stdout, **options)
        temporary = stack.enter_context(atomic_path(out))
        with open(temporary, "wb") as stream_out:
            return reconstruct_mrd_stream(model, stream_in, stream_out, **options)
