"""The server's log: one line per event, rate-limited, and the only thing the server writes (:func:`server_logger`).

**Rate limit** (:class:`RateLimit`, a filter the server puts on its logger and on the warnings' logger): at most
:data:`LINES_PER_WINDOW` lines of one kind (one format string, e.g. every "connected" line) per
:data:`WINDOW_SECONDS`; the rest are counted, and the next line of that kind after the window,
or the summary at shutdown (:meth:`RateLimit.summaries`), says how many were suppressed. So a flood of connections or
of bad messages grows the log by a bounded number of lines per minute, whatever the incoming bytes.

**Nothing else on standard error**: Python warnings (``warnings.warn``, e.g. from a library) are routed into this
log (``logging.captureWarnings``) with the same limit, and each connection thread computes with numpy's floating-point
warnings off (:mod:`compressor.export.scanner.mrd_connection`), its inputs having been checked to be finite.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from compressor.errors import InputError

LOGGER_NAME = "compressor.serve"
WARNINGS_LOGGER = "py.warnings"
LINES_PER_WINDOW = 20
WINDOW_SECONDS = 60.0


class RateLimit(logging.Filter):
    """Let at most ``lines`` records of one kind (logger and format string) through per ``window`` seconds
    (thread-safe)."""

    def __init__(self, lines: int = LINES_PER_WINDOW, window: float = WINDOW_SECONDS):
        super().__init__()
        self.lines, self.window = lines, window
        self._kinds: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        with self._lock:
            start, passed, suppressed = self._kinds.get(key, (now, 0, 0))
            if now - start >= self.window:
                if suppressed:
                    record.msg = f"{record.msg} [{int(suppressed)} more like this suppressed in {self.window:g} s]"
                start, passed, suppressed = now, 0, 0
            keep = passed < self.lines
            self._kinds[key] = [start, passed + keep, suppressed + (not keep)]
        return keep

    def summaries(self) -> list[str]:
        """One line per kind with lines suppressed in its current window (and clears them)."""
        with self._lock:
            lines = [f"{int(suppressed)} log lines like {message!r} suppressed"
                     for (_, message), (_, _, suppressed) in self._kinds.items() if suppressed]
            for state in self._kinds.values():
                state[2] = 0
        return lines


def check_log_path(path: Path) -> None:
    """Refuse a log file that cannot be appended to (its folder missing, not a folder, not writable; the file a
    folder or read-only) in one line, before the server starts."""
    path = Path(path)
    if path.is_dir():
        raise InputError("the log file is a folder", path)
    if not path.parent.is_dir():
        raise InputError(f"the log file's folder {path.parent} does not exist", path)
    try:
        with open(path, "a"):
            pass
    except OSError as error:
        raise InputError(f"cannot write the log file ({error.strerror or error})", path) from None


def server_logger(path: Path | None, verbose: bool = False) -> logging.Logger:
    """The server's logger (``compressor.serve``) writing one line per event to ``path`` (appended; checked with
    :func:`check_log_path`) or to standard error; Python warnings go there too. ``verbose`` adds every slice's
    latency (debug level). The server adds its :class:`RateLimit` to both loggers while it runs."""
    if path is not None:
        check_log_path(path)
    log = logging.getLogger(LOGGER_NAME)
    handler = logging.FileHandler(path) if path is not None else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    for name in (LOGGER_NAME, WARNINGS_LOGGER):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.captureWarnings(True)
    return log
