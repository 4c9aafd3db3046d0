"""The one logging setup of every process (CLI, gateway, feedback writer): rich-formatted records on a terminal,
JSON lines otherwise (files, pipes, containers), always on stderr so stdout stays for results.

A JSON line carries ``ts``, ``level``, ``logger``, ``message`` and, while a request is handled, its ``request_id``
(:data:`request_id`, set by the gateway for each request), so one request can be found in every log it touched.
rich is optional: the service images do not carry it (and their layer contract forbids importing it), so it is
looked up only for a terminal, and JSON lines are written where it is missing.
"""

from __future__ import annotations

import importlib
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO

import orjson

#: The id of the request being handled (``X-Request-Id``); a context variable, so each asyncio task has its own.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

NOISY = ("optuna", "matplotlib", "urllib3", "onnx_ir", "onnxscript", "httpx", "httpcore")


class JsonFormatter(logging.Formatter):
    """One JSON object per record; the exception, when there is one, as a ``traceback`` string."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid:
            line["request_id"] = rid
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class RequestIdFilter(logging.Filter):
    """Adds the current request id to a record (the rich handler prints it in front of the message)."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = request_id.get()
        if rid and not hasattr(record, "request_id"):
            record.request_id = rid
            record.msg = f"[{rid}] {record.msg}"
        return True


def _rich_handler(stream: IO[str]) -> logging.Handler | None:
    try:
        console = importlib.import_module("rich.console").Console(file=stream)
        handler: logging.Handler = importlib.import_module("rich.logging").RichHandler(
            console=console, show_path=False, rich_tracebacks=False
        )
    except ImportError:
        return None
    handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    handler.addFilter(RequestIdFilter())
    return handler


def handler_for(stream: IO[str]) -> logging.Handler:
    """rich on a terminal (where rich is installed), JSON lines everywhere else."""
    if stream.isatty() and (rich := _rich_handler(stream)) is not None:
        return rich
    plain = logging.StreamHandler(stream)
    plain.setFormatter(JsonFormatter())
    return plain


def configure_logging(level: str = "INFO", stream: IO[str] | None = None) -> None:
    logging.basicConfig(level=level, handlers=[handler_for(stream or sys.stderr)], force=True)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
