"""REST transport: thin FastAPI routes over :class:`gateway.service.GatewayService`, behind
:class:`gateway.edge.EdgeMiddleware` (request id, body cap, counting)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from gateway.edge import EdgeMiddleware
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
from gateway.service import FeedbackEvent, GatewayError, GatewayService, PlayEvent
from recsys.core.asgi import error_response, json_response

log = logging.getLogger(__name__)

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "invalid request (bad top_k, unknown group, play time out of range)"},
    413: {"model": ErrorResponse, "description": "body too large"},
    409: {"model": ErrorResponse, "description": "the event_id is already stored with other content"},
    415: {"model": ErrorResponse, "description": "body is not sent as JSON"},
    422: {"model": ErrorResponse, "description": "body does not match the schema"},
    503: {"model": ErrorResponse, "description": "Triton or the feedback writer is unavailable; see Retry-After"},
}


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


#: Headers of the request, declared for the OpenAPI document (the middleware and ``_group_key`` read them).
UserIdHeader = Annotated[
    str | None,
    Header(
        alias="X-User-Id",
        description="the listener id NGINX splits on (else ?user_id= or the uid cookie, else the body's); must equal "
        "the body's user_id when sent",
    ),
]
GroupHeader = Annotated[
    str | None,
    Header(
        alias="X-AB-Group",
        description="set by NGINX from its split (a client's own is overwritten there); the gateway recomputes the "
        "group from the experiment and counts a disagreement in ab_group_mismatch_total. Answered as a response "
        "header too, so NGINX's access log has the group also when the user id came only in the body",
    ),
]
RequestIdHeader = Annotated[
    str | None,
    Header(
        alias="X-Request-Id",
        description="1-64 characters of A-Z a-z 0-9 . _ : -; answered in the X-Request-Id response header and, for "
        "/recommend, the list's request_id (reuse one only to retry the same request); a new id when absent",
    ),
]


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
        if exc.kind == "conflict":
            return error_response(409, "event_conflict", exc.message)
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

    @app.exception_handler(ClientDisconnect)
    async def _gone(_: Request, exc: ClientDisconnect) -> Response:
        """The client left mid-body (or its request did not arrive in time): nothing to answer, nothing broke."""
        log.info("client disconnected before its request arrived whole")
        return error_response(400, "client_disconnected", "the request did not arrive whole")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unexpected error", exc_info=exc)
        return error_response(500, "internal", "internal error (logged)")

    @app.post("/recommend", response_model=RecommendResponse, responses=ERRORS)
    async def recommend(
        body: RecommendRequest,
        request: Request,
        x_user_id: UserIdHeader = None,
        x_ab_group: GroupHeader = None,
        x_request_id: RequestIdHeader = None,
    ) -> Response:
        """Top-k items for a listener from the model of their A/B group."""
        user_id = str(body.user_id)
        result = await service.recommend(
            user_id,
            body.top_k,
            group_key=_group_key(request, user_id),
            header_group=x_ab_group,
            request_id=request.state.request_id,
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
                "score_kind": result.score_kind,
            },
            headers={"X-AB-Group": result.group},
        )

    @app.post("/feedback", status_code=202, response_model=FeedbackResponse, responses=ERRORS)
    async def feedback(body: FeedbackRequest, x_request_id: RequestIdHeader = None) -> Response:
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
        return json_response({"event_id": event_id, "status": "accepted"}, 202, headers={"X-AB-Group": body.group})

    @app.post("/plays", status_code=202, response_model=PlaysResponse, responses=ERRORS)
    async def plays(body: PlaysRequest, x_request_id: RequestIdHeader = None) -> Response:
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
        """Triton is up and every model of the experiment answers a real inference (checked at most once a second);
        ``problems`` says what failed."""
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
            schemas = schema["components"]["schemas"]
            schemas["FeedbackRequest"]["properties"]["group"]["enum"] = list(service.experiment.group_names)
            top_k = schemas["RecommendRequest"]["properties"]["top_k"]["anyOf"][0]
            top_k["maximum"] = service.max_top_k
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(EdgeMiddleware, service=service, max_body_bytes=max_body_bytes)
    return app
