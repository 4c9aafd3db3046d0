"""Runs the feedback writer (``python -m feedback`` in the image, ``recsys serve feedback``): HTTP intake, spool
and database writer in one process."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from feedback.app import create_app
from feedback.metrics import WriterMetrics
from feedback.spool import Spool
from feedback.writer import DatabaseWriter
from recsys.core.asgi import server
from recsys.core.settings import Settings

log = logging.getLogger(__name__)


def build_app(settings: Settings) -> FastAPI:
    metrics = WriterMetrics()
    spool = Spool(settings.spool_dir)
    writer = DatabaseWriter(
        spool,
        settings.database_url.get_secret_value(),
        metrics,
        batch_size=settings.write_batch_size,
        interval_s=settings.write_interval_ms / 1000.0,
    )
    token = settings.feedback_token.get_secret_value()
    if not token:
        log.error("RECSYS_FEEDBACK_TOKEN is not set: the intake refuses every event (401) until it is")
    return create_app(spool, writer, metrics, token=token)


def run(settings: Settings) -> None:
    import uvloop

    http = server(build_app(settings), settings.feedback_host, settings.feedback_port)
    log.info("feedback writer on %s:%d, spool %s", settings.feedback_host, settings.feedback_port, settings.spool_dir)
    uvloop.run(http.serve())
