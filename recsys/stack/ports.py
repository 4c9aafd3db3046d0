"""Free loopback ports for servers the project starts (tests and benchmarks run beside a developer's stack)."""

from __future__ import annotations

import contextlib
import socket

__all__ = ["connect_host", "free_port", "free_ports"]


def free_port(host: str = "127.0.0.1") -> int:
    """One port nobody listens on right now (another process may still take it before the server binds it)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports: the sockets are held open together, so the picks cannot repeat."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(family, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def connect_host(host: str) -> str:
    """The address a client dials for a server bound to ``host`` (wildcards become loopback; IPv6 in brackets)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
