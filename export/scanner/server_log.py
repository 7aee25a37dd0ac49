"""The server's log: one line per event, rate-limited, and the only thing the server writes (:func:`server_logger`).

**Rate limit** (:class:`RateLimit`; the server logs through :class:`LimitedLog`, warnings through
:class:`LimitFilter`): at most
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


class RateLimit:
    """At most ``lines`` lines of one kind (a format string) per ``window`` seconds (thread-safe)."""

    def __init__(self, lines: int = LINES_PER_WINDOW, window: float = WINDOW_SECONDS):
        self.lines, self.window = lines, window
        self._kinds: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def admit(self, kind: str) -> int | None:
        """``None`` when a line of ``kind`` is to be suppressed, else how many were suppressed in the window that
        just ended (to say so on this line)."""
        now = time.monotonic()
        with self._lock:
            start, passed, suppressed = self._kinds.get(kind, (now, 0, 0))
            ended = 0
            if now - start >= self.window:
                start, passed, ended, suppressed = now, 0, int(suppressed), 0
            keep = passed < self.lines
            self._kinds[kind] = [start, passed + keep, suppressed + (not keep)]
        return ended if keep else None

    def summaries(self) -> list[str]:
        """One line per kind with lines suppressed in its current window (and clears them)."""
        with self._lock:
            lines = [f"{int(suppressed)} log lines like {kind!r} suppressed"
                     for kind, (_, _, suppressed) in self._kinds.items() if suppressed]
            for state in self._kinds.values():
                state[2] = 0
        return lines

    def note(self, message: str, ended: int) -> str:
        """``message`` saying that ``ended`` lines like it were suppressed (unchanged for 0)."""
        return f"{message} [{ended} more like this suppressed in {self.window:g} s]" if ended else message


class LimitedLog(logging.LoggerAdapter):
    """A logger whose lines pass through a :class:`RateLimit` (one per server: servers in one process do not share
    their counts)."""

    def __init__(self, logger: logging.Logger, limit: RateLimit):
        super().__init__(logger, {})
        self.limit = limit

    def log(self, level: int, msg: object, *args: object, **kwargs: object) -> None:
        if not self.isEnabledFor(level):
            return
        ended = self.limit.admit(str(msg))
        if ended is not None:
            self.logger.log(level, self.limit.note(str(msg), ended), *args, **kwargs)


class LimitFilter(logging.Filter):
    """A :class:`RateLimit` as a logging filter (Python warnings, which do not pass through :class:`LimitedLog`)."""

    def __init__(self, limit: RateLimit):
        super().__init__()
        self.limit = limit

    def filter(self, record: logging.LogRecord) -> bool:
        ended = self.limit.admit(str(record.msg))
        if ended:
            record.msg = self.limit.note(str(record.msg), ended)
        return ended is not None


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
    :func:`check_log_path`) or to standard error; Python warnings go there too, through a :class:`RateLimit` of their
    own. ``verbose`` adds every slice's latency (debug level). The server logs through :class:`LimitedLog`."""
    if path is not None:
        check_log_path(path)
    log = logging.getLogger(LOGGER_NAME)
    handler = logging.FileHandler(path) if path is not None else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    for name in (LOGGER_NAME, WARNINGS_LOGGER):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False
    logging.getLogger(WARNINGS_LOGGER).filters = [LimitFilter(RateLimit())]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.captureWarnings(True)
    return log
