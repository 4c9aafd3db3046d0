"""The writer's HTTP intake: ``POST /events`` answers 202 only after the events are fsync'd into the spool.

Every POST carries the shared intake token (``Authorization: Bearer <RECSYS_FEEDBACK_TOKEN>``; the gateway sends
it): without it, 401 before the body is read. A body is refused with 413 from its Content-Length alone, and a
chunked one as soon as it passes the cap, so a large body costs at most the cap in memory. A spool that cannot
write (full disk) answers 503 with Retry-After and makes ``/readyz`` say not ready until it can. An event whose
``event_id`` is already held with other content gets 409 naming the ids (:mod:`feedback.conflicts`), and nothing of
its batch is spooled.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI, Request, Response
from pydantic import ValidationError

from feedback.conflicts import keyed, keyed_payloads
from feedback.events import BATCH, EventBatch
from feedback.metrics import WriterMetrics
from feedback.spool import Spool, SpoolUnavailableError
from feedback.writer import DatabaseWriter
from recsys.core.asgi import error_response, json_response
from recsys.core.limits import WRITER_MAX_BODY_BYTES as MAX_BODY_BYTES


async def read_body(request: Request, limit: int) -> bytes | None:
    """The body, read only while it stays within ``limit`` bytes (None past it: the rest is never read)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def authorized(request: Request, token: bytes) -> bool:
    """Whether the request carries the intake token (compared in constant time)."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token)


def create_app(spool: Spool, writer: DatabaseWriter, metrics: WriterMetrics, *, token: str) -> FastAPI:
    """``token``: the shared intake token; an empty one refuses every POST (the writer fails closed)."""
    secret = token.encode()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        spool.open()
        writer.keys.claim(keyed_payloads(r.payload for r in spool.pending))  # ids spooled before a restart
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
        if not authorized(request, secret):
            metrics.rejected.labels("unauthorized").inc()
            message = "send the intake token: Authorization: Bearer <RECSYS_FEEDBACK_TOKEN>"
            return error_response(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})
        body = await read_body(request, MAX_BODY_BYTES)
        if body is None:
            metrics.rejected.labels("too_large").inc()
            return error_response(413, "body_too_large", f"request body over {MAX_BODY_BYTES} bytes")
        try:
            batch = BATCH.validate_json(body)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:10]
            )
            metrics.rejected.labels("invalid").inc()
            return error_response(422, "invalid_event", problems)
        events = [e.model_dump() for e in batch.events]
        keys = keyed(events)
        conflicting = writer.keys.conflicts(keys)
        if keys and not conflicting:
            writer.keys.claim(keys)  # first, so that a concurrent request with other content sees them
            try:
                stored = await writer.stored_digests([k for k, _ in keys]) or {}
            except BaseException:  # cancelled (the client left): nothing was spooled
                writer.keys.release(keys)
                raise
            conflicting = sorted({k[1] for k, d in keys if stored.get(k, d) != d})
            if conflicting:
                writer.keys.release(keys)
        if conflicting:
            metrics.rejected.labels("conflict").inc(len(conflicting))
            message = f"event_id already stored with other content: {', '.join(conflicting[:10])}"
            return json_response(
                {"error": {"code": "event_conflict", "message": message, "event_ids": conflicting}}, 409
            )
        try:  # the spool releases the keys of events it does not take, also once the client has left (cancelled)
            await spool.append([orjson.dumps(e) for e in events], unwritten=lambda: writer.keys.release(keys))
        except SpoolUnavailableError as exc:
            metrics.rejected.labels("spool_unavailable").inc(len(batch.events))
            headers = {"Retry-After": str(spool.retry_after_s)}
            return error_response(503, "spool_unavailable", str(exc), headers)
        for event in batch.events:
            metrics.received.labels(event.kind).inc()
        return json_response({"accepted": len(batch.events)}, 202)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        """Ready = the spool accepts events (the database may be down: events then wait in the spool)."""
        ready = spool.probe() and bool(secret)
        state = {
            "ready": ready,
            "database": writer.db_up,
            "spooled": len(spool.pending),
            "spool": spool.fault or "ok",
            "intake": "token required" if secret else "closed: RECSYS_FEEDBACK_TOKEN is not set",
        }
        return json_response(state, 200 if ready else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        metrics.spool_events.set(len(spool.pending))
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return app
