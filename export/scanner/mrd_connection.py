r"""One client's MRD stream, from its first message to close (:class:`Connection`): the message flow of ``compress
serve``.

::

    client -> server   [config file | config text]  XML header  [text (JSON parameters)]  acquisition ...  close
    server -> client   image (one per slice, as soon as the slice is complete) ...  close
                       or, on a problem:  text "ERROR <reason>"  close

* **config** (file name or text) and the first **text** that is JSON ``{"parameters": {...}}`` make the
  :class:`~compressor.export.scanner.stream_parameters.StreamRequest` (which model, the comparison series); other
  texts, and texts after the first acquisition, are counted, not logged one by one;
* the **XML header** is checked before any acquisition is used: one 2-D Cartesian encoding
  (:meth:`~compressor.data.mrd_header.EncodingGeometry.from_header`), ``BitsStored`` within 1..16, and at least one
  served model with its image grid (else the answer is the error listing the served models);
* at the first **acquisition** the model is selected (:func:`~compressor.export.scanner.model_selection.select_model`
  with the request, the header and the coils); when several fit and none is named, the choice waits for the first
  complete slice, whose lines decide. The log and every image's ``ImageComment`` say which model ran and why;
* each acquisition becomes a :class:`~compressor.data.mrd_readout.Readout` for the connection's
  :class:`~compressor.data.mrd_raw.SliceAssembler` (bounded by the server's caps, its bytes reserved from the
  connection's budget); a slice it completes is reconstructed at once
  (:class:`~compressor.export.scanner.slice_reconstruction.SliceReconstructor`) and its image sent (and, with
  ``parameters.zerofilled``, its zero-filled image in the comparison series); waveforms are counted and ignored;
* **close**: slices still open are completed and sent, then the server sends close.

With ``--save-data`` the stream is recorded as it arrives (:class:`~compressor.export.scanner.stream_recorder.
StreamRecorder`). Errors propagate to :mod:`compressor.export.scanner.mrd_server`, which ends the connection with
``ERROR <reason>``; the connection's bytes go back to the server's budget however it ends (:meth:`Connection.close`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import ismrmrd
import numpy as np

from compressor.data.mrd_header import EncodingGeometry
from compressor.data.mrd_limits import ByteBudget
from compressor.data.mrd_raw import AssembledSlice, SliceAssembler, skipped_summary
from compressor.data.mrd_readout import readout_from_ismrmrd
from compressor.errors import InputError
from compressor.export.scanner.image_formats import ImageFormat, bits_stored
from compressor.export.scanner.image_meta import model_labels, zero_filled_labels
from compressor.export.scanner.ismrmrd_images import ImageStyle, SeriesNumbering, slice_image
from compressor.export.scanner.model_selection import ScanDescription, Selection, select_model
from compressor.export.scanner.mrd_protocol import (
    ConfigMessage,
    HeaderMessage,
    MessageReader,
    MessageWriter,
    TextMessage,
)
from compressor.export.scanner.served_models import ServedModel
from compressor.export.scanner.server_limits import ServerLimits
from compressor.export.scanner.server_stats import ServerStats, SliceTiming
from compressor.export.scanner.slice_reconstruction import SliceReconstructor, SliceResult
from compressor.export.scanner.stream_parameters import StreamRequest
from compressor.export.scanner.stream_recorder import StreamRecorder

LOGGED_TEXT = 200  # characters of a config or JSON parameters text in the log


@dataclass(frozen=True)
class ServingContext:
    """What every connection shares: the served models and their reconstructors (by served name), the choices of
    ``compress serve`` and the server's budget, statistics and log."""

    models: Sequence[ServedModel]
    reconstructors: Mapping[str, SliceReconstructor]
    default_model: str | None
    image_format: ImageFormat
    limits: ServerLimits
    budget: ByteBudget
    stats: ServerStats
    log: logging.Logger | logging.LoggerAdapter
    save_data: Path | None = None
    save_cap: int = 0


class Connection:
    """One client's stream (module docstring). :meth:`run` returns after sending close, or raises (the server turns
    the error into ``ERROR <reason>``); :meth:`close` always follows.

    Attributes:
        number, source: the connection's number and name (``connection from HOST:PORT``).
        messages, acquisitions, images, waveforms, texts_ignored, lines_outside_mask: counts for the log.
        served: the model that runs (``None`` until selected).
    """

    def __init__(self, context: ServingContext, number: int, source: str, reader: MessageReader,
                 writer: MessageWriter, budget: ByteBudget):
        self.context, self.number, self.source = context, number, source
        self.reader, self.writer, self.budget = reader, writer, budget
        self.request = StreamRequest()
        self.geometry: EncodingGeometry | None = None
        self.assembler: SliceAssembler | None = None
        self.bits = 0
        self.selection: Selection | None = None
        self.served: ServedModel | None = None
        self.styles: tuple[ImageStyle, ImageStyle] | None = None
        self.numbering = SeriesNumbering()
        self.coils: int | None = None
        self.messages = self.acquisitions = self.images = self.waveforms = 0
        self.texts_ignored = self.lines_outside_mask = 0
        self.recorder = None if context.save_data is None else StreamRecorder(
            context.save_data, number, context.save_cap, context.log, source)

    def run(self) -> None:
        """The message loop; returns after sending close."""
        with np.errstate(all="ignore"):  # inputs are checked finite; no numpy warning ever reaches stderr
            while (message := self.reader.next()) is not None:
                received = time.perf_counter()
                self.messages += 1
                self._take(message, received)
            if self.assembler is not None:
                closed = time.perf_counter()
                for assembled in self.assembler.finish():
                    self._deliver(assembled, closed)
        self.writer.close()

    def close(self) -> Path | None:
        """Give the connection's bytes back to the server's budget and finish the recording (its path, if any)."""
        self.budget.close()
        return self.recorder.finish() if self.recorder is not None else None

    def summary(self) -> str:
        """The end of the connection's last log line: the model, what was set aside, zeroed and ignored."""
        parts = [f"model {self.served.name}"] if self.served is not None else []
        if self.assembler is None:
            parts.append("no header received")
        else:
            parts.append(skipped_summary(self.assembler.skipped, self.assembler.noise_readouts))
        parts.append(f"{self.waveforms} waveforms ignored" if self.waveforms else "")
        parts.append(f"{self.texts_ignored} text messages ignored" if self.texts_ignored else "")
        parts.append(f"{self.lines_outside_mask} acquired lines outside the mask zeroed"
                     if self.lines_outside_mask else "")
        return "; ".join(part for part in parts if part)

    def _take(self, message: object, received: float) -> None:
        if isinstance(message, ismrmrd.Acquisition):
            self._acquisition(message, received)
        elif isinstance(message, TextMessage):
            self._text(message)
        elif isinstance(message, HeaderMessage):
            self._header(message)
        elif isinstance(message, ConfigMessage):
            if self.geometry is not None:
                raise InputError("a config message after the XML header", self.source)
            self.request = StreamRequest(message.text, not message.is_file)
            self.context.log.info("%s: config %r", self.source, message.text[:LOGGED_TEXT])
            if self.recorder is not None:
                self.recorder.config(message)
        elif isinstance(message, ismrmrd.Waveform):
            self.waveforms += 1
            if self.recorder is not None:
                self.recorder.waveform(message)

    def _header(self, message: HeaderMessage) -> None:
        if self.geometry is not None:
            raise InputError("a second XML header", self.source)
        geometry = EncodingGeometry.from_header(message.header, self.source)
        self.bits = bits_stored(message.header, self.source)
        scan = ScanDescription(geometry)
        if not any(tuple(served.profile.image_size) == geometry.image_shape for served in self.context.models):
            select_model([served.profile for served in self.context.models], StreamRequest(), scan)  # the listing
        self.geometry = geometry
        self.assembler = SliceAssembler(geometry, self.source, self.context.limits.assembly, self.budget)
        if self.recorder is not None:
            self.recorder.header(message)

    def _text(self, message: TextMessage) -> None:
        parameters = None if self.acquisitions or self.request.json_text is not None \
            else self.request.with_parameters(message.text)
        if parameters is None:
            self.texts_ignored += 1
            return
        self.request = parameters
        self.context.log.info("%s: parameters %s", self.source, message.text[:LOGGED_TEXT].replace("\n", " "))
        if self.recorder is not None:
            self.recorder.parameters(message.text)

    def _acquisition(self, acquisition: ismrmrd.Acquisition, received: float) -> None:
        if self.assembler is None:
            raise InputError("an acquisition before the XML header", self.source)
        self.acquisitions += 1
        if self.recorder is not None:
            self.recorder.acquisition(acquisition)
        if self.selection is None:
            self.coils = acquisition.active_channels
            self.numbering = SeriesNumbering(self.request.zero_filled)
            self._select(ScanDescription(self.geometry, self.coils), [served.profile for served in self.context.models])
        for assembled in self.assembler.add(readout_from_ismrmrd(acquisition, self.source)):
            self._deliver(assembled, received)

    def _select(self, scan: ScanDescription, candidates: Sequence) -> None:
        """Select the model (module docstring); once chosen, fix the connection's image styles and log why."""
        self.selection = select_model(candidates, self.request, scan, self.context.default_model)
        chosen = self.selection.model
        if chosen is None:
            self.context.log.info("%s: %s: %s", self.source, self.selection.reason,
                                  ", ".join(model.name for model in self.selection.candidates))
            return
        self.served = next(served for served in self.context.models if served.profile is chosen)
        metadata = self.served.metadata
        image_format = self.context.image_format
        self.styles = (ImageStyle(image_format, self.bits, model_labels(chosen.name, metadata, self.selection.label)),
                       ImageStyle(image_format, self.bits, zero_filled_labels(chosen.name)))
        self.context.log.info("%s: model %s (%s, %s): %s", self.source, chosen.name, metadata.architecture,
                              metadata.precision.value, self.selection.reason)

    def _deliver(self, assembled: AssembledSlice, received: float) -> None:
        """Reconstruct one slice, send its image (and comparison image), record its timing."""
        if self.served is None:  # several fit the header: the first slice's lines decide (or raise)
            self._select(ScanDescription(self.geometry, self.coils, assembled.acquired_lines),
                         self.selection.candidates)
        started = time.perf_counter()
        reconstructor = self.context.reconstructors[self.served.name]
        result = reconstructor.reconstruct(assembled, self.geometry, self.source, self.request.zero_filled)
        images = self._images(assembled, result)
        compute = time.perf_counter() - started - result.queued
        for image in images:
            self.writer.send(image)
        self.images += len(images)
        self.lines_outside_mask += result.lines_outside_mask
        latency = time.perf_counter() - received
        self.context.stats.record_slice(SliceTiming(self.number, assembled.key, latency, compute, result.queued,
                                                    self.served.name))
        self.context.log.debug("%s: slice %s sent, %.3f ms after its last readout (%.3f ms compute, %.3f ms queued)",
                               self.source, tuple(assembled.key), latency * 1e3, compute * 1e3, result.queued * 1e3)

    def _images(self, assembled: AssembledSlice, result: SliceResult) -> list[ismrmrd.Image]:
        """The network's image and, when asked for, the zero-filled one, numbered in their series."""
        network, comparison = self.styles
        images = [slice_image(result.reconstruction, assembled, self.geometry, *self.numbering.next(assembled.key),
                              network)]
        if result.zero_filled is not None:
            images.append(slice_image(result.zero_filled, assembled, self.geometry,
                                      *self.numbering.next(assembled.key, zero_filled=True), comparison))
        return images
