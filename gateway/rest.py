"""REST transport: thin FastAPI routes over :class:`gateway.service.GatewayService`, plus an ASGI middleware that
counts and times every request and caps body size before anything reads the body."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.schemas import (
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    Play,
    PlayBatch,
    PlaysRequest,
    PlaysResponse,
    RecommendRequest,
    RecommendResponse,
)
from gateway.service import PLAYS_MAX_BODY_BYTES, FeedbackEvent, GatewayError, GatewayService, PlayEvent
from recsys.core.asgi import error_response, json_response

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ROUTES = frozenset({"/recommend", "/feedback", "/plays", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"})
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "invalid request (bad top_k, unknown group, play time out of range)"},
    413: {"model": ErrorResponse, "description": "body too large"},
    415: {"model": ErrorResponse, "description": "body is not sent as JSON"},
    422: {"model": ErrorResponse, "description": "body does not match the schema"},
    503: {"model": ErrorResponse, "description": "Triton or the feedback writer is unavailable; see Retry-After"},
}


class EdgeMiddleware:
    """Request counting/timing by route and status, and the body-size cap (413 before the body is parsed): ``/plays``
    takes a batch and has its own, larger cap (``PLAYS_MAX_BODY_BYTES``), every other route ``max_body_bytes``."""

    def __init__(self, app: ASGIApp, service: GatewayService, max_body_bytes: int) -> None:
        self.app = app
        self.service = service
        self.max_body_bytes = max_body_bytes
        self.plays_max_body_bytes = max(max_body_bytes, PLAYS_MAX_BODY_BYTES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status = 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        limit = self.plays_max_body_bytes if scope["path"] == "/plays" else self.max_body_bytes
        try:
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > limit):
                await self._too_large(limit, scope, receive, send_counted)
            else:
                await self.app(scope, self._capped(limit, receive), send_counted)
        finally:
            metrics = self.service.metrics
            metrics.requests.labels(route, scope["method"], str(status)).inc()
            metrics.request_duration_ms.labels(route).observe((time.perf_counter() - start) * 1000.0)

    def _capped(self, limit: int, receive: Receive) -> Receive:
        seen = 0

        async def capped() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:  # a chunked body without Content-Length: FastAPI passes this through
                raise StarletteHTTPException(413, f"request body over {limit} bytes")
            return message

        return capped

    async def _too_large(self, limit: int, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, "body_too_large", f"request body over {limit} bytes")
        await response(scope, receive, send)


def _group_key(request: Request, user_id: str) -> str:
    """The key NGINX hashes (X-User-Id, then ?user_id=, then the uid cookie), else the body's user id."""
    for source, value in (
        ("X-User-Id header", request.headers.get("x-user-id")),
        ("user_id query parameter", request.query_params.get("user_id")),
        ("uid cookie", request.cookies.get("uid")),
    ):
        if value:
            if value != user_id:
                raise GatewayError.invalid(f"{source} {value[:40]!r} differs from the body's user_id")
            return value
    return user_id


def _play_event(play: Play) -> PlayEvent:
    return PlayEvent(str(play.user_id), play.item_id, play.ts_ms, play.ms_played, play.event_id)


def create_app(service: GatewayService, *, max_body_bytes: int = 16384) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.events.start()
        yield
        await service.events.close()
        await service.triton.close()

    app = FastAPI(
        title="recsys gateway",
        version="1",
        summary="Music recommendations over REST, answered by Triton; A/B groups and feedback.",
        lifespan=lifespan,
        # Metrics go to Prometheus (gateway.metrics); FastAPI's own OpenTelemetry hooks would only cost time on
        # every request (an environment and provider check each).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )

    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, exc: GatewayError) -> Response:
        if exc.kind == "invalid":
            return error_response(400, "invalid_argument", exc.message)
        headers = {"Retry-After": str(exc.retry_after_s or 1)}
        return error_response(503, "unavailable", exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        content_type = request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in content_type:
            return error_response(
                415, "unsupported_media_type", "send the body as JSON (Content-Type: application/json)"
            )
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()[:10]
        )
        return error_response(422, "invalid_request", problems or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        code = "body_too_large" if exc.status_code == 413 else "http_error"
        return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unexpected error", exc_info=exc)
        return error_response(500, "internal", "internal error (logged)")

    @app.post("/recommend", response_model=RecommendResponse, responses=ERRORS)
    async def recommend(body: RecommendRequest, request: Request) -> Response:
        """Top-k items for a listener from the model of their A/B group."""
        user_id = str(body.user_id)
        result = await service.recommend(
            user_id,
            body.top_k,
            group_key=_group_key(request, user_id),
            header_group=request.headers.get("x-ab-group"),
        )
        items = [{"item_id": i, "score": s} for i, s in zip(result.item_ids, result.scores, strict=True)]
        return json_response(
            {
                "recommended_items": items,
                "group": result.group,
                "model": result.model,
                "model_version": result.model_version,
                "request_id": result.request_id,
                "inference_time_ms": result.inference_time_ms,
                "fallback": result.fallback,
            }
        )

    @app.post("/feedback", status_code=202, response_model=FeedbackResponse, responses=ERRORS)
    async def feedback(body: FeedbackRequest) -> Response:
        """Clicks and skips on a served list; 202 once the feedback writer has durably accepted the event."""
        event_id = await service.feedback(
            FeedbackEvent(
                user_id=str(body.user_id),
                group=body.group,
                request_id=body.request_id,
                clicked_item=body.clicked_item,
                skipped_items=tuple(body.skipped_items),
                inference_time_ms=None if body.inference_time_ms is None else float(body.inference_time_ms),
                event_id=body.event_id,
            )
        )
        return json_response({"event_id": event_id, "status": "accepted"}, 202)

    @app.post("/plays", status_code=202, response_model=PlaysResponse, responses=ERRORS)
    async def plays(body: PlaysRequest) -> Response:
        """Organic plays from the listener's player, one or ``{"plays": [...]}``; 202 once the writer has them all on
        disk. Retries are stored once (by ``event_id``, sent or derived)."""
        received = body.plays if isinstance(body, PlayBatch) else [body]
        event_ids = await service.plays([_play_event(p) for p in received])
        return json_response({"accepted": len(event_ids), "event_ids": event_ids, "status": "accepted"}, 202)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up (liveness)."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "Triton or a model of the experiment is not ready"}})
    async def readyz() -> Response:
        """Triton is ready and every model of the experiment is loaded."""
        state = await service.readiness()
        return json_response(state, 200 if state["ready"] else 503)

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics of this process."""
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4")

    def openapi() -> dict[str, Any]:
        """The generated document, plus what only the running config knows: the experiment's group names."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            group = schema["components"]["schemas"]["FeedbackRequest"]["properties"]["group"]
            group["enum"] = list(service.experiment.group_names)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(EdgeMiddleware, service=service, max_body_bytes=max_body_bytes)
    return app
