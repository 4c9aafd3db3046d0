"""The HTTP server under every service (``recsys.core.asgi.server``): headers are bounded before they are read,
requests must arrive in bounded time, malformed HTTP gets JSON. A real uvicorn on a socket with a small app and a
1 s read timeout, then the stack's real gateway (issue 14: a 32 MB header was accepted, +64 MB RSS; a half-sent
request held its connection for minutes; uvicorn answered malformed HTTP in plain text)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from recsys.core.asgi import server
from recsys.stack.local import LocalStack, free_port


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"bytes": len(await request.body())})


def read_all(sock: socket.socket) -> bytes:
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    return received


def send_until_refused(sock: socket.socket, total: int) -> int:
    """Sends ``total`` bytes of header in 64 KiB pieces; how many went out before the server closed."""
    sent = 0
    try:
        while sent < total:
            sock.sendall(b"a" * 65536)
            sent += 65536
    except OSError:
        pass
    return sent


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def status_and_json(received: bytes) -> tuple[int, Any]:
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), received[:300]
    return int(head.split(b" ")[1]), json.loads(body)


@pytest.fixture(scope="module")
def guarded() -> Iterator[tuple[str, int]]:
    """A real server with an 8 KiB header cap and a 1 s read timeout, in a thread of its own."""
    port = free_port()
    http = server(Starlette(routes=[Route("/", echo, methods=["POST"])]), "127.0.0.1", port,
                  max_header_bytes=8192, read_timeout_s=1.0, keep_alive_s=5)  # fmt: skip
    thread = threading.Thread(target=lambda: asyncio.run(http.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not http.started:
        assert time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.01)
    yield "127.0.0.1", port
    http.should_exit = True
    thread.join(10)


def test_a_request_within_the_limits_is_served_and_the_connection_kept(guarded: tuple[str, int]) -> None:
    with httpx.Client(base_url=f"http://{guarded[0]}:{guarded[1]}") as client:
        for _ in range(3):
            response = client.post("/", content=b"x" * 100, headers={"X-Fine": "a" * 4000})
            assert response.json() == {"bytes": 100}


def test_headers_over_the_cap_get_431_before_the_rest_is_read(guarded: tuple[str, int]) -> None:
    with socket.create_connection(guarded, timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nX-Big: ")
        assert send_until_refused(sock, 32 << 20) < 4 << 20  # answered and closed long before 32 MB arrived
        status, body = status_and_json(read_all(sock))
    assert status == 431
    assert body["error"]["code"] == "headers_too_large"


@pytest.mark.parametrize(
    "sent",
    [b"", b"POST / HTTP/1.1\r\nHost: x\r\n", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345"],
    ids=["nothing", "half the headers", "half the body"],
)
def test_a_request_that_does_not_arrive_in_time_gets_408_and_is_closed(guarded: tuple[str, int], sent: bytes) -> None:
    with socket.create_connection(guarded, timeout=5) as sock:  # 5 s: the server must close well before
        sock.sendall(sent)
        status, body = status_and_json(read_all(sock))
    assert status == 408
    assert body["error"]["code"] == "request_timeout"


def test_a_trickled_header_does_not_reset_the_deadline(guarded: tuple[str, int]) -> None:
    with socket.create_connection(guarded, timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")
        closed = False
        for _ in range(40):  # one byte every 0.1 s, for up to 4 s: the 1 s deadline is for the whole request
            try:
                sock.sendall(b"X")
            except OSError:
                closed = True
                break
            time.sleep(0.1)
        received = read_all(sock)
    assert closed or received.startswith(b"HTTP/1.1 408")


@pytest.mark.parametrize(
    "request_line", [b"GARBAGE\r\n\r\n", b"POST / HTTP/1.1\r\nBad Header\r\n\r\n", b"\x00\xff\r\n\r\n"]
)
def test_malformed_http_gets_a_json_400(guarded: tuple[str, int], request_line: bytes) -> None:
    with socket.create_connection(guarded, timeout=5) as sock:
        sock.sendall(request_line)
        status, body = status_and_json(read_all(sock))
    assert status == 400
    assert body["error"]["code"] == "bad_http"


def test_a_websocket_upgrade_is_answered_as_plain_http(guarded: tuple[str, int]) -> None:
    with socket.create_connection(guarded, timeout=5) as sock:
        sock.sendall(
            b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nConnection: close\r\n\r\n"
        )
        received = read_all(sock)
    assert received.startswith(b"HTTP/1.1 404"), received[:200]  # the app's answer, not a bare 403


@pytest.mark.stack
def test_the_real_gateway_bounds_headers_and_answers_malformed_http_in_json(stack: LocalStack) -> None:
    address = ("127.0.0.1", stack.config.ports.gateway)
    pid = stack.gateways[0].pid
    assert pid is not None
    rss_before = rss_kib(pid)
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = send_until_refused(sock, 32 << 20)
        status, body = status_and_json(read_all(sock))
    grown = rss_kib(pid) - rss_before
    print(f"gateway: refused after {sent} bytes sent of a 32 MiB header; RSS {rss_before} KiB, +{grown} KiB")
    assert sent < 4 << 20
    assert grown < 16 * 1024  # was +64 MB for a 32 MB header
    assert status == 431
    assert body["error"]["code"] == "headers_too_large"
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(b"NOT HTTP\r\n\r\n")
        status, body = status_and_json(read_all(sock))
    assert status == 400
    assert body["error"]["code"] == "bad_http"
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(b"GET /recommend HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\r\n")
        status, body = status_and_json(read_all(sock))
    assert status == 405
    assert body["error"]["code"] == "http_error"
    assert httpx.get(stack.gateway_url + "/healthz").status_code == 200
