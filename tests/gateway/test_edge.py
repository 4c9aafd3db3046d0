"""The public edge (the stack's real NGINX in front of the real gateways): every error it answers is JSON, it
exposes the API only, and one request id names a request in NGINX's log, the answer and the feedback tables.

Regression tests of issue 14 (26 of 116 error bodies were NGINX's HTML pages or plain text; /metrics, /readyz, /docs
and /openapi.json were public) and issue 15 (request ids; the group missing from the access log when the user id
came only in the body)."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest
from tests_support import query

from recsys.stack.local import LocalStack

pytestmark = pytest.mark.stack

BIG = b"a" * 20000
#: Requests a hostile client sends: each must get a JSON {"error": ...} body with a 4xx/5xx status.
HOSTILE = {
    "unknown method": b"FOO /recommend HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET on the API": b"GET /recommend HTTP/1.1\r\nHost: x\r\n\r\n",
    "TRACE": b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n",
    "garbage request line": b"GARBAGE\r\n\r\n",
    "binary request line": b"\x00\x01\x02\xff\r\n\r\n",
    "HTTP/2.0 in a request line": b"POST /recommend HTTP/2.0\r\nHost: x\r\n\r\n",
    "huge URI": b"POST /" + BIG + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "huge header": b"POST /recommend HTTP/1.1\r\nHost: x\r\nX-Big: " + BIG + b"\r\n\r\n",
    "too many header bytes": b"POST /recommend HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-%d: %s\r\n" % (n, b"a" * 7000) for n in range(6))
    + b"\r\n",
    "bad Host": b"POST /recommend HTTP/1.1\r\nHost: a/b\r\n\r\n",
    "no Host": b"POST /recommend HTTP/1.1\r\n\r\n",
    "two Hosts": b"POST /recommend HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "bad header name": b"POST /recommend HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n",
    "bad Content-Length": b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "Content-Length and chunked": b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "unknown transfer coding": b"POST /recommend HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    "bad chunk": b"POST /recommend HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "body over the cap": b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 40000\r\n\r\n",
    "bad percent escape": b"POST /%zz HTTP/1.1\r\nHost: x\r\n\r\n",
    "path above the root": b"POST /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
    "unknown route": b"POST /admin HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    "not JSON to the gateway": b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 3\r\n\r\n{x}",
}


def exchange(url: str, data: bytes, source: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    """Sends raw bytes and reads one response (status, headers, body) until the server closes or 5 s pass."""
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=5, source_address=(source, 0)) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
                head, sep, body = received.partition(b"\r\n\r\n")
                if sep and b"content-length:" in head.lower():
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    if len(body) >= length:
                        break
        except (TimeoutError, ConnectionResetError):
            pass
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1."), f"no HTTP response: {received[:200]!r}"
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("name", HOSTILE)
def test_every_error_of_the_edge_is_json(stack: LocalStack, name: str) -> None:
    status, headers, body = exchange(stack.nginx_url, HOSTILE[name])
    assert 400 <= status < 600, (status, body)
    assert headers.get("content-type", "").startswith("application/json"), (status, headers, body)
    error = json.loads(body)["error"]
    assert error["code"], body
    assert error["message"], body


def test_the_edge_exposes_the_api_only(stack: LocalStack) -> None:
    for path in ("/metrics", "/readyz", "/healthz", "/docs", "/openapi.json", "/redoc"):
        public = httpx.get(stack.nginx_url + path)
        assert public.status_code == 404, path
        assert public.json()["error"]["code"] == "not_found"
        assert httpx.get(stack.gateway_url + path).status_code == 200, path  # inside, on the gateway's own port
    wrong_method = httpx.get(stack.nginx_url + "/recommend")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"


def _access_log_line(stack: LocalStack, request_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 5  # NGINX writes the line when the request ends; normally at once
    while True:
        for line in reversed(stack.nginx_site.access_log.read_text().splitlines()):
            record: dict[str, object] = json.loads(line)
            if record["request_id"] == request_id:
                return record
        assert time.monotonic() < deadline, f"no access log line for {request_id}"
        time.sleep(0.05)


def test_one_request_id_through_nginx_the_gateway_and_the_impressions(stack: LocalStack) -> None:
    mine = "trace-7f3a.1:check"
    answer = httpx.post(
        f"{stack.nginx_url}/recommend", json={"user_id": "7", "top_k": 3}, headers={"X-Request-Id": mine}
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-request-id"] == answer.json()["request_id"] == mine
    assert _access_log_line(stack, mine)["status"] == 200

    generated = httpx.post(f"{stack.nginx_url}/recommend", json={"user_id": "8"})  # NGINX's own $request_id
    rid = generated.json()["request_id"]
    assert generated.headers["x-request-id"] == rid
    assert len(rid) == 32
    assert _access_log_line(stack, rid)["status"] == 200

    unusable = httpx.post(f"{stack.nginx_url}/recommend", json={"user_id": "9"}, headers={"X-Request-Id": "a b\x7f"})
    assert unusable.status_code == 200  # NGINX replaces an id that could break a log line with its own
    assert unusable.json()["request_id"] != "a b\x7f"

    stack.wait_drained()
    rows = query(stack.database_url, "SELECT user_id FROM impressions WHERE request_id = ANY($1)", [mine, rid])
    assert sorted(r["user_id"] for r in rows) == ["7", "8"]


def test_access_log_has_the_group_when_the_user_id_is_only_in_the_body(stack: LocalStack) -> None:
    answer = httpx.post(f"{stack.nginx_url}/recommend", json={"user_id": "body-only-42"})  # no header, query, cookie
    assert answer.status_code == 200
    assert answer.headers["x-ab-group"] == answer.json()["group"] == stack.experiment.assign("body-only-42")
    assert _access_log_line(stack, answer.headers["x-request-id"])["group"] == answer.json()["group"]


def test_gateway_refuses_a_request_id_that_could_break_a_log_line(stack: LocalStack) -> None:
    direct = httpx.post(f"{stack.gateway_url}/recommend", json={"user_id": "1"}, headers={"X-Request-Id": "x" * 65})
    assert direct.status_code == 400
    assert "X-Request-Id" in direct.json()["error"]["message"]


def test_the_gateway_logs_a_refused_request_with_its_id_as_json(stack: LocalStack) -> None:
    refused = httpx.post(
        f"{stack.gateway_url}/recommend", json={"user_id": "1", "top_k": 10**6}, headers={"X-Request-Id": "log-7c1"}
    )
    assert refused.status_code == 400
    log_path = stack.gateways[0].log_path
    deadline = time.monotonic() + 5
    while True:
        records = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
        mine = [r for r in records if r.get("request_id") == "log-7c1"]
        if mine:
            break
        assert time.monotonic() < deadline, "the gateway logged no JSON line with the request id"
        time.sleep(0.05)
    assert "-> 400" in mine[0]["message"]
