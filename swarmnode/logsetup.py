"""Logging for `swarmnode run`: one format for our records and for every library's.

``--log-format text`` (the default) writes ``time level logger message`` lines;
``--log-format json`` writes one JSON object per line with ``time`` (UTC, ISO 8601),
``level``, ``logger``, ``message``, ``site``, ``node`` (the peer id, once the node is
up) and, for an error with a traceback, ``exception`` (the whole traceback, inside the
record). In the text format a traceback follows its record with every line indented,
so "a line that starts with a space continues the record" groups each event.

py-libp2p configures its loggers when imported: no handler, ``propagate = False``, so
its warnings reach stderr through `logging.lastResort` as bare, untimestamped lines
and multi-line tracebacks. `setup_logging` imports it first, then hands its loggers
(and the warnings module, uncaught exceptions in threads and "exception ignored"
reports) to the one handler on the root logger (``LIBP2P_DEBUG`` still sets its levels).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import IO, Any, Final, Literal, cast

LogFormat = Literal["text", "json"]
LOG_FORMATS: Final = ("text", "json")
OUR_LOGGERS: Final = ("swarmnode", "consensus", "crypto", "models")
LIBRARY_LOGGERS: Final = ("libp2p", "multiaddr", "trio", "asyncio")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s %(message)s"


class _Context(logging.Filter):
    """Adds ``site`` and ``node`` to every record (set once they are known)."""

    def __init__(self, site: str | None) -> None:
        super().__init__()
        self.site = site
        self.node: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        record.site = self.site
        record.node = self.node
        library = record.name.split(".")[0] in LIBRARY_LOGGERS
        if record.exc_info and library and _cancelled(record.exc_info[1]):
            # py-libp2p logs its tasks' cancellation at shutdown with a traceback: the node
            # is stopping as asked, which is not an error; the message alone says enough.
            record.exc_info = None
            record.exc_text = None
        if library and isinstance(record.args, tuple) and any(_cancelled_arg(a) for a in record.args):
            # Its connection setup logs a cancelled upgrade with the traceback as an argument
            # ("[ADDCONN_FAIL] ... Cancelled()\n<traceback>"): one line says enough.
            record.msg = str(record.msg).replace("\n", " ")
            record.args = tuple(_TRACEBACK_OMITTED if _traceback_text(a) else a for a in record.args)
        return True


_TRACEBACK_OMITTED: Final = "(cancelled; traceback omitted)"


def _cancelled_arg(arg: object) -> bool:
    return isinstance(arg, BaseException) and _cancelled(arg)


def _traceback_text(arg: object) -> bool:
    return isinstance(arg, str) and "Traceback (most recent call last)" in arg


def _cancelled(exc: BaseException | None) -> bool:
    import trio

    if isinstance(exc, BaseExceptionGroup):
        return all(_cancelled(e) for e in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


_CONTEXT: Final = _Context(None)
_active_format: list[LogFormat] = []  # the format `setup_logging` installed in this process


def json_logging() -> bool:
    """True once `setup_logging` installed the JSON format: stderr then carries only JSON lines."""
    return _active_format == ["json"]


def set_log_node(peer_id: str) -> None:
    """Name this process's node (its peer id) in every record from now on."""
    _CONTEXT.node = peer_id


def _utc(created: float) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{stamp}.{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in the message are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "site": getattr(record, "site", None),
            "node": getattr(record, "node", None),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """The classic line; continuation lines (multi-line messages, tracebacks) indented."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", "\n    ")


def make_formatter(log_format: LogFormat) -> logging.Formatter:
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    return JsonFormatter() if log_format == "json" else TextFormatter()


def _adopt(names: Iterable[str], level: int) -> None:
    """Route library loggers (and their children) to the root handler at `level` or above."""
    manager = logging.Logger.manager
    children = [n for n in list(manager.loggerDict) if any(n.startswith(f"{p}.") for p in names)]
    for name in (*names, *children):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
        if name in names and not os.environ.get("LIBP2P_DEBUG"):  # its own switch for its debug logs
            logger.setLevel(level)
        elif logger.level != logging.NOTSET and logger.level < level:
            logger.setLevel(logging.NOTSET)  # a child set chattier by the library follows its parent


def _hook_uncaught() -> None:
    errors = logging.getLogger("swarmnode.uncaught")

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit or args.exc_value is None:
            return
        name = args.thread.name if args.thread is not None else "?"
        errors.error(
            "uncaught exception in thread %s",
            name,
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )

    def unraisable_hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        what = unraisable.err_msg or "Exception ignored in"
        errors.warning(
            "%s: %r",
            what,
            unraisable.object,
            exc_info=None if exc is None else (type(exc), exc, exc.__traceback__),
        )

    def main_hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        errors.critical("uncaught exception", exc_info=(kind, exc, tb))

    threading.excepthook = thread_hook
    sys.unraisablehook = unraisable_hook
    sys.excepthook = main_hook


def setup_logging(
    level: str,
    *,
    log_format: LogFormat = "text",
    quiet: bool = False,
    site: str | None = None,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Send every record through one handler on the root logger, in `log_format`.

    Our loggers log at `level`; libraries at WARNING and above (`quiet`, under the live
    view: ours too, the table shows the rest). Returns the handler (tests read its stream).
    """
    import libp2p  # noqa: F401  (its import configures its loggers; undo that after it, not before)

    ours = logging.getLevelName(level.upper())
    if not isinstance(ours, int):
        raise ValueError(f"unknown log level {level!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(make_formatter(log_format))
    _CONTEXT.site = site
    handler.addFilter(_CONTEXT)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in OUR_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(max(logging.WARNING, ours) if quiet else ours)
    _adopt(LIBRARY_LOGGERS, logging.WARNING)
    logging.captureWarnings(True)
    _active_format[:] = [log_format]
    _hook_uncaught()
    return cast(logging.Handler, handler)
