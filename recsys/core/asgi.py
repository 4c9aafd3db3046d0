"""How every HTTP service of the project is served and answers: uvicorn with httptools on the caller's (uvloop)
event loop, without access logs (NGINX writes those, and the services count requests in Prometheus); JSON bodies
through orjson, errors as ``{"error": {"code", "message"}}``.

uvicorn's httptools protocol reads request headers without a size limit and has no deadline for a request to
arrive (its keep-alive timer runs only between requests, not before the first byte nor while headers or a body
trickle in): one 32 MB header was buffered whole, and a half-sent request held its connection for minutes.
:class:`GuardedProtocol` closes both: headers over ``max_header_bytes`` get a 431 before the rest is read, and a
request that has not fully arrived ``read_timeout_s`` after its connection opened (a later one: after its first byte)
gets a 408 and the connection is closed. Malformed HTTP gets a JSON 400 instead of uvicorn's plain text.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import uvicorn
from starlette.responses import Response
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: Defaults of :func:`server`: NGINX passes at most 4 header buffers of 8 KiB (``large_client_header_buffers``).
MAX_HEADER_BYTES = 32 * 1024
READ_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(code, message), status_code=status, media_type="application/json", headers=headers)


def raw_error(status: int, reason: str, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 error response that closes the connection, for answers given below the ASGI app."""
    body = error_body(code, message)
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header size cap, a whole-request read deadline and JSON 400s.

    Subclassed through :func:`guarded_protocol`, which sets the two limits as class attributes (uvicorn builds the
    protocol itself, with its own arguments).
    """

    max_header_bytes = MAX_HEADER_BYTES
    read_timeout_s = READ_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_bytes = 0
        self._headers_done = False
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_deadline()  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._headers_done or self.parser is None or self.transport.is_closing():
            return
        self._header_bytes += len(data)
        if self._header_bytes > self.max_header_bytes:
            message = f"request line and headers over {self.max_header_bytes} bytes"
            self._refuse(raw_error(431, "Request Header Fields Too Large", "headers_too_large", message))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._headers_done = False
        self._arm_deadline()

    def on_headers_complete(self) -> None:
        self._headers_done = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._cancel_deadline()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms uvicorn's keep-alive timer for an idle connection
        self._headers_done = False
        self._header_bytes = 0

    def send_400_response(self, msg: str) -> None:
        self._refuse(raw_error(400, "Bad Request", "bad_http", "malformed HTTP request"))

    def _arm_deadline(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.read_timeout_s, self._deadline_passed)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete or not self.cycle.response_started:
            message = f"the request did not arrive whole within {self.read_timeout_s:g} s"
            self._refuse(raw_error(408, "Request Timeout", "request_timeout", message))
        else:  # a response is under way and the app still waits for the body: only closing is left
            self.transport.close()

    def _refuse(self, response: bytes) -> None:
        self._cancel_deadline()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app (if it runs) sees a disconnect, not the rest of a body
            self.cycle.message_event.set()
        self.transport.write(response)
        self.transport.close()


def guarded_protocol(max_header_bytes: int, read_timeout_s: float) -> type[GuardedProtocol]:
    return type(
        "GuardedProtocol",
        (GuardedProtocol,),
        {"max_header_bytes": max_header_bytes, "read_timeout_s": read_timeout_s},
    )


def server(
    app: Any,
    host: str,
    port: int,
    *,
    max_header_bytes: int = MAX_HEADER_BYTES,
    read_timeout_s: float = READ_TIMEOUT_S,
    keep_alive_s: int = KEEP_ALIVE_S,
) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="none",
        http=guarded_protocol(max_header_bytes, read_timeout_s),
        ws="none",  # no WebSocket routes: an upgrade request is plain HTTP (JSON 404/405), not websockets' bare 403
        log_config=None,  # uvicorn's records go through the one logging setup (recsys.core.logs: JSON lines)
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_keep_alive=keep_alive_s,
    )
    return uvicorn.Server(config)
