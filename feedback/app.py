"""The writer's HTTP intake: ``POST /events`` answers 202 only after the events are fsync'd into the spool."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI, Request, Response
from pydantic import ValidationError

from feedback.events import BATCH, EventBatch
from feedback.metrics import WriterMetrics
from feedback.spool import Spool
from feedback.writer import DatabaseWriter
from recsys.core.asgi import error_response, json_response

MAX_BODY_BYTES = 8 * 1024 * 1024


def create_app(spool: Spool, writer: DatabaseWriter, metrics: WriterMetrics) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        spool.open()
        task = asyncio.create_task(writer.run(), name="database-writer")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await writer.close()
        spool.close()

    app = FastAPI(
        title="recsys feedback writer",
        version="1",
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False},  # metrics go to Prometheus
    )

    @app.post(
        "/events",
        status_code=202,
        openapi_extra={"requestBody": {"content": {"application/json": {"schema": EventBatch.model_json_schema()}}}},
    )
    async def events(request: Request) -> Response:
        """Impressions, feedback and plays; 202 means on disk, to reach PostgreSQL even if it is down right now."""
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return error_response(413, "body_too_large", f"request body over {MAX_BODY_BYTES} bytes")
        try:
            batch = BATCH.validate_json(body)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:10]
            )
            metrics.rejected.labels("invalid").inc()
            return error_response(422, "invalid_event", problems)
        await spool.append([orjson.dumps(e.model_dump()) for e in batch.events])
        for event in batch.events:
            metrics.received.labels(event.kind).inc()
        return json_response({"accepted": len(batch.events)}, 202)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        """Ready = the spool accepts events; the database may be down (events then wait in the spool)."""
        return json_response({"ready": True, "database": writer.db_up, "spooled": len(spool.pending)})

    @app.get("/metrics")
    async def prometheus() -> Response:
        metrics.spool_events.set(len(spool.pending))
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return app
