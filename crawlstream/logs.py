"""Logging setup shared by every process: plain lines for people, JSON lines for collectors.

Every record carries the ids an operator needs to act on it: ``worker`` (set once per process,
default ``<host>:<pid>``) and whatever the code bound for the work at hand, typically ``job_id``
and ``run_id``: ``bind_log_context(job_id=..., run_id=...)`` for the rest of the process (or
task: the context lives in a contextvar), ``with log_context(...):`` for a block. JSON lines
(``settings.log_json``) carry them as fields, plain lines as a ``[key=value ...]`` suffix.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

_context: ContextVar[dict[str, str]] = ContextVar("crawlstream_log_context", default={})  # noqa: B039


def bind_log_context(**fields: object) -> None:
    """Add ``fields`` (e.g. job_id, run_id) to every later record of this context."""
    _context.set({**_context.get(), **{k: str(v) for k, v in fields.items() if v is not None}})


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """``fields`` on every record logged inside the block."""
    token = _context.set({**_context.get(), **{k: str(v) for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the bound ids onto each record (as attributes, and as ``record.context`` text)."""

    def __init__(self, worker: str) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        fields = {"worker": self.worker, **_context.get()}
        for key, value in fields.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        record.context = " ".join(f"{k}={v}" for k, v in fields.items())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; extra fields (job_id, run_id, worker) are kept."""

    _skip = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "context"}

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update({k: v for k, v in vars(record).items() if k not in self._skip})
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def setup_logging(level: str = "INFO", *, json_lines: bool = False, worker: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter(worker or f"{socket.gethostname()}:{os.getpid()}"))
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s [%(context)s]")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
