"""Logging for the node process: quiet by default, one JSON object per line on request.

Operators read ``formation-node run``'s stdout (a few status lines); logs go to stderr at
``warning`` unless ``--log-level`` says otherwise. ``--log-json`` writes one object per line
(``ts``, ``level``, ``logger``, ``msg`` and any ``extra`` fields) for log collectors. Third-party
loggers (libp2p, multiaddr, asyncio) are held at ``error``: their warnings are about their own
internals, and they would drown ours.

Every line is in the node's format, libraries' too: libp2p's import sets its logger to
``propagate=False`` with no handler, so Python's last-resort handler used to print its
records bare (a message, or a multi-line traceback block). ``adopt_library_loggers`` (called
by ``node.p2p.transport`` once libp2p is imported) sends them through the node's handler
again, where ``_LibraryRecords`` makes each one line (no traceback below ``debug``) and
demotes a failed dial to ``info``: the node retries and reports unreachable peers itself.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Final

__all__ = ["LEVELS", "adopt_library_loggers", "configure_logging"]

LEVELS: Final = ("debug", "info", "warning", "error")
_NOISY: Final = ("libp2p", "multiaddr", "asyncio", "async_service", "trio_websocket")
_STANDARD: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        data.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


# libp2p messages about a dial that failed; the node's own dialer retries and logs them.
_DIAL_FAILURES: Final = ("Failed to open TCP stream", "failed to dial", "Failed to dial")


class _LibraryRecords(logging.Filter):
    """One line per library record, and dial failures at info (module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(_NOISY):
            return True
        message = record.getMessage()
        threshold = logging.getLogger().getEffectiveLevel()
        if any(marker in message for marker in _DIAL_FAILURES):
            record.levelno, record.levelname = logging.INFO, "INFO"
        if threshold > logging.DEBUG:
            if record.exc_info and record.exc_info[1] is not None:
                message += f" ({type(record.exc_info[1]).__name__})"
            record.exc_info, record.exc_text, record.stack_info = None, None, None
            record.msg, record.args = " | ".join(message.split("\n")), None
        return record.levelno >= threshold


def adopt_library_loggers() -> None:
    """Route the libraries' records through the root handler again (module docstring)."""
    for name in _NOISY:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def configure_logging(level: str = "warning", *, json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_LibraryRecords())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.ERROR)
    adopt_library_loggers()
