"""The ASGI middleware in front of every REST route: the request id, the body-size cap, counting and timing.

The request id is the client's ``X-Request-Id`` (NGINX passes the client's, else its own ``$request_id``), or a new
one when the gateway is called without any. It is set for the logs (:data:`recsys.core.logs.request_id`), answered
in the ``X-Request-Id`` header of every response, and ``/recommend`` keys the served list with it (the impression
row, the ``request_id`` a client quotes in ``/feedback``), so NGINX's access log, the gateway's log, Triton's
request and the feedback tables name one request alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.service import GatewayError, GatewayService, request_id_of
from recsys.core import logs
from recsys.core.asgi import error_response
from recsys.core.limits import PLAYS_MAX_BODY_BYTES

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ROUTES = frozenset({"/recommend", "/feedback", "/plays", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"})


class EdgeMiddleware:
    """``/plays`` takes a batch and has its own, larger body cap (``PLAYS_MAX_BODY_BYTES``), every other route
    ``max_body_bytes``; both answer 413 before the body is parsed."""

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
        headers = dict(scope["headers"])
        status = 500
        refused: GatewayError | None = None
        try:
            request_id = request_id_of(headers.get(b"x-request-id", b"").decode("latin-1"))
        except GatewayError as exc:
            request_id, refused = request_id_of(""), exc
        scope.setdefault("state", {})["request_id"] = request_id
        token = logs.request_id.set(request_id)

        async def send_tagged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
            await send(message)

        limit = self.plays_max_body_bytes if scope["path"] == "/plays" else self.max_body_bytes
        try:
            length = headers.get(b"content-length")
            if refused is not None:
                await error_response(400, "invalid_argument", refused.message)(scope, receive, send_tagged)
            elif length is not None and (not length.isdigit() or int(length) > limit):
                response = error_response(413, "body_too_large", f"request body over {limit} bytes")
                await response(scope, receive, send_tagged)
            else:
                await self.app(scope, self._capped(limit, receive), send_tagged)
        finally:
            elapsed_ms = (time.perf_counter() - start) * 1000.0
            metrics = self.service.metrics
            metrics.requests.labels(route, scope["method"], str(status)).inc()
            metrics.request_duration_ms.labels(route).observe(elapsed_ms)
            level = logging.INFO if status >= 400 else logging.DEBUG
            if log.isEnabledFor(level):
                log.log(level, "%s %s -> %d in %.1f ms", scope["method"], route, status, elapsed_ms)
            logs.request_id.reset(token)

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
