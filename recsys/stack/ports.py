"""Loopback ports for the servers the project starts: free ones (tests and benchmarks run beside a developer's
stack), and the check that every port a command is about to bind is free, made before anything starts, naming
what holds a taken one (read from the kernel's socket tables and the holders' open files in ``/proc``)."""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from recsys.stack.process import ServiceError

__all__ = [
    "PortHolder",
    "PortInUseError",
    "check_ports_free",
    "connect_host",
    "free_port",
    "free_ports",
    "port_holders",
    "port_in_use",
]

PROC = Path("/proc")
LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp
COMMAND_CHARS = 120


class PortInUseError(ServiceError):
    """A port a server is about to bind is taken (or two of its ports are the same); nothing was started."""


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


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when a server could not bind ``host:port`` now (someone listens on it, or on a wildcard address).
    Bound with SO_REUSEADDR as servers do, so connections of a stopped server in TIME_WAIT do not count."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


@dataclass(frozen=True)
class PortHolder:
    """A process with a listening socket on the port open (``command``: its command line, shortened)."""

    pid: int
    command: str

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command})"


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on ``port`` (any address, IPv4 and IPv6) in this network namespace."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _command(pid: int) -> str:
    try:
        argv = (PROC / str(pid) / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return "?"
    text = " ".join(" ".join(part.decode(errors="replace").split()) for part in argv if part) or "?"
    return text if len(text) <= COMMAND_CHARS else text[: COMMAND_CHARS - 3] + "..."


def port_holders(port: int) -> list[PortHolder]:
    """The processes holding a socket that listens on ``port`` (what ``ss -ltnp`` shows), lowest pid first:
    for a server with workers (NGINX) the master comes first. Empty when they are not visible to this user."""
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not wanted:
        return []
    holders = []
    for fd_dir in PROC.glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    if str(fd.readlink()) in wanted:
                        pid = int(fd_dir.parent.name)
                        holders.append(PortHolder(pid, _command(pid)))
                        break
    return sorted(holders, key=lambda holder: holder.pid)


def check_ports_free(ports: Mapping[str, int], host: str = "127.0.0.1") -> None:
    """Raises :class:`PortInUseError` (one line) unless every port of ``ports`` (what uses it -> port) is valid,
    distinct and free on ``host``: the first taken one is named with what holds it."""
    seen: dict[int, str] = {}
    for name, port in ports.items():
        if not 1 <= port <= 65535:
            raise PortInUseError(f"port {port} for {name} is outside 1..65535")
        if port in seen:
            raise PortInUseError(f"port {port} is given to both {seen[port]} and {name}")
        seen[port] = name
    for name, port in ports.items():
        try:
            taken = port_in_use(port, host)
        except OSError as exc:
            raise PortInUseError(f"port {port} for {name} cannot be bound on {host}: {exc.strerror}") from None
        if taken:
            holders = port_holders(port)
            who = str(holders[0]) if holders else "another process (not visible to this user)"
            more = f" and {len(holders) - 1} more" if len(holders) > 1 else ""
            raise PortInUseError(f"port {port} for {name} is in use by {who}{more}; nothing was started")
