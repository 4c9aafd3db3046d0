"""The health checks ``recsys stack status`` runs (tests/stack/test_stack_cli.py runs them on a real stack)."""

from __future__ import annotations

import socket

from recsys.stack.ports import free_port
from recsys.stack.status import check_health


def test_tcp_health_is_whether_the_port_accepts() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert check_health(f"tcp://127.0.0.1:{port}").healthy
    closed = check_health(f"tcp://127.0.0.1:{free_port()}")
    assert not closed.healthy
    assert "refused" in closed.detail.lower()


def test_http_health_needs_an_answer() -> None:
    down = check_health(f"http://127.0.0.1:{free_port()}/readyz", timeout_s=1)
    assert not down.healthy
    assert down.detail
