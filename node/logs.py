"""Logging for the node process: quiet by default, one JSON object per line on request.

Operators read ``formation-node run``'s stdout (a few status lines); logs go to stderr at
``warning`` unless ``--log-level`` says otherwise. ``--log-json`` writes one object per line
(``ts``, ``level``, ``logger``, ``msg`` and any ``extra`` fields) for log collectors. Third-party
loggers (libp2p, multiaddr, asyncio) are held at ``error``: their warnings are about their own
internals, and they would drown ours.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Final

__all__ = ["LEVELS", "configure_logging"]

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


def configure_logging(level: str = "warning", *, json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
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
