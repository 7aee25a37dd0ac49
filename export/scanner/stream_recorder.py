r"""``compress serve --save-data DIR``: each incoming stream recorded as an ISMRMRD HDF5 file, for replay
(:class:`StreamRecorder`).

One file per connection that sent an XML header, ``DIR/MRD_input_<YYYYmmdd-HHMMSS>_<pid>_<connection>.h5`` (``DIR``
is created if missing), in the layout python-ismrmrd-server's ``connection.py`` writes, so its ``client.py``,
``ismrmrd.Dataset`` and ``compress reconstruct --source ismrmrd`` read it:

* ``/dataset/config_file`` (a config file name) or ``/dataset/config`` (a config text): one variable-length string;
* ``/dataset/configAdditional``: the JSON parameters' text (the first text message that is such JSON);
* ``/dataset/xml``: the XML header as received; ``/dataset/data``: the acquisitions (``ismrmrd.hdf5``'s
  ``acquisition_dtype``: header, trajectory and data as float32 vectors), in the order received;
  ``/dataset/waveforms``: the waveforms (``waveform_dtype``).

**Atomic.** The file is written under a hidden temporary name in ``DIR`` and renamed when the connection ends, however
it ends (a refused or interrupted stream is worth replaying too): ``DIR`` never holds half a file under a final name.

**Capped.** A stream is recorded up to ``cap`` bytes (``--save-data-cap``, 2048 MiB by default: acquisitions' headers,
trajectories and data, waveforms and texts); past it the recording is dropped whole (a truncated scan would replay as
a different one), with one log line, and the reconstruction goes on. A write error (a full disk) does the same.

Acquisitions are buffered and appended :data:`FLUSH_ROWS` at a time (at most :data:`FLUSH_BYTES` held), not one HDF5
resize per readout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path

import h5py
import ismrmrd
import numpy as np

from compressor.data.mrd_limits import MIB
from compressor.export.scanner.mrd_protocol import ACQUISITION_HEADER_BYTES, ConfigMessage, HeaderMessage

GROUP = "dataset"
DEFAULT_SAVE_CAP_MIB = 2048
FLUSH_ROWS = 64
FLUSH_BYTES = 4 * MIB
TEXT_TYPE = h5py.special_dtype(vlen=bytes)


def _row(dtype: np.dtype, header_dtype: np.dtype, head: object, **vectors: np.ndarray) -> np.void:
    """One row of an ``ismrmrd.hdf5`` table: ``head`` (a ctypes header) and the variable-length ``vectors``."""
    row = np.zeros(1, dtype)[0]
    row["head"] = np.frombuffer(bytes(head), dtype=header_dtype)[0]
    for name, values in vectors.items():
        row[name] = values
    return row


class StreamRecorder:
    """One connection's stream into ``folder`` (module docstring).

    Args:
        folder: ``--save-data DIR`` (created if missing).
        connection: the connection's number (in the file name).
        cap: bytes recorded at most.
        log: where the one line about a dropped recording goes.
        source: names the connection in that line.
    """

    def __init__(self, folder: Path, connection: int, cap: int, log: logging.Logger | logging.LoggerAdapter,
                 source: str):
        self.folder, self.cap, self.log, self.source = Path(folder), cap, log, source
        self.name = f"MRD_input_{time.strftime('%Y%m%d-%H%M%S')}_{os.getpid()}_{connection}.h5"
        self.recorded = 0
        self._file: h5py.File | None = None
        self._temporary: Path | None = None
        self._rows: list[np.ndarray] = []
        self._pending = 0
        self._dropped = False
        self._texts: dict[str, str] = {}

    @property
    def active(self) -> bool:
        return not self._dropped

    def config(self, message: ConfigMessage) -> None:
        self._texts["config_file" if message.is_file else "config"] = message.text
        self._count(len(message.text))

    def parameters(self, text: str) -> None:
        self._texts["configAdditional"] = text
        self._count(len(text))

    def header(self, message: HeaderMessage) -> None:
        """Start the file: it exists from the header on."""
        if self._dropped:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=f".{self.name}.", suffix=".tmp", dir=self.folder)
            os.close(handle)
            self._temporary = Path(temporary)
            self._file = h5py.File(self._temporary, "w")
            group = self._file.create_group(GROUP)
            group.create_dataset("xml", shape=(1,), dtype=TEXT_TYPE)[0] = message.xml.encode()
        except OSError as error:
            self._drop(f"cannot write in {self.folder} ({error.strerror or error})")
        self._count(len(message.xml))

    def acquisition(self, acquisition: ismrmrd.Acquisition) -> None:
        if self._file is None or self._dropped:
            return
        self._rows.append(_row(ismrmrd.hdf5.acquisition_dtype, ismrmrd.hdf5.acquisition_header_dtype,
                               acquisition.getHead(), traj=np.ascontiguousarray(acquisition.traj, np.float32).ravel(),
                               data=np.ascontiguousarray(acquisition.data, np.complex64).view(np.float32).ravel()))
        size = ACQUISITION_HEADER_BYTES + acquisition.traj.nbytes + acquisition.data.nbytes
        self._pending += size
        self._count(size)
        if len(self._rows) >= FLUSH_ROWS or self._pending >= FLUSH_BYTES:
            self._flush()

    def waveform(self, waveform: ismrmrd.Waveform) -> None:
        if self._file is not None and not self._dropped:
            self._count(waveform.data.nbytes)
            self._append("waveforms", [_row(ismrmrd.hdf5.waveform_dtype, ismrmrd.hdf5.waveform_header_dtype,
                                            waveform.getHead(), data=np.ascontiguousarray(waveform.data,
                                                                                          np.uint32).ravel())],
                         ismrmrd.hdf5.waveform_dtype)

    def finish(self) -> Path | None:
        """Complete the file and rename it into place; its path, or ``None`` when nothing is saved."""
        if self._file is None or self._dropped:
            self._discard()
            return None
        try:
            self._flush()
            for key, text in self._texts.items():
                self._file[GROUP].create_dataset(key, shape=(1,), dtype=TEXT_TYPE)[0] = text.encode()
            self._file.close()
            self._file = None
            final = self.folder / self.name
            os.replace(self._temporary, final)
            return final
        except OSError as error:
            self._drop(f"cannot write in {self.folder} ({error.strerror or error})")
            return None

    def _count(self, nbytes: int) -> None:
        self.recorded += nbytes
        if self.recorded > self.cap and not self._dropped:
            self._drop(f"the stream passed the {self.cap / MIB:g} MiB cap (--save-data-cap)")

    def _flush(self) -> None:
        if self._rows:
            rows, self._rows, self._pending = self._rows, [], 0
            self._append("data", rows, ismrmrd.hdf5.acquisition_dtype)

    def _append(self, name: str, rows: list[np.ndarray], dtype: np.dtype) -> None:
        try:
            group = self._file[GROUP]
            if name not in group:
                group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(FLUSH_ROWS,))
            dataset = group[name]
            start = dataset.shape[0]
            dataset.resize(start + len(rows), axis=0)
            dataset[start:] = np.array(rows, dtype=dtype)
        except OSError as error:
            self._drop(f"cannot write in {self.folder} ({error.strerror or error})")

    def _drop(self, reason: str) -> None:
        self._dropped = True
        self.log.warning("%s: not recording the stream: %s; nothing saved", self.source, reason)
        self._discard()

    def _discard(self) -> None:
        self._rows, self._pending = [], 0
        if self._file is not None:
            with contextlib.suppress(OSError, RuntimeError):  # removed below: a failing close changes nothing
                self._file.close()
            self._file = None
        if self._temporary is not None:
            self._temporary.unlink(missing_ok=True)
            self._temporary = None
