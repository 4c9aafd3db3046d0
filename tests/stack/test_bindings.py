"""Every server the local stack starts listens on loopback only (read from the kernel's socket tables, so no
traffic leaves the machine to check it)."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

from recsys.stack.local import LocalStack

pytestmark = pytest.mark.stack
LISTEN = "0A"


def listening() -> dict[int, set[str]]:
    """port -> local addresses of the LISTEN sockets (IPv4 and IPv6)."""
    found: dict[int, set[str]] = {}
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != LISTEN:
                continue
            address_hex, port_hex = fields[1].split(":")
            raw = bytes.fromhex(address_hex)
            if family == socket.AF_INET:
                address = socket.inet_ntop(family, struct.pack("<I", int.from_bytes(raw, "big")))
            else:  # four little-endian 32-bit words
                words = struct.unpack(">4I", raw)
                address = socket.inet_ntop(family, struct.pack("<4I", *words))
            found.setdefault(int(port_hex, 16), set()).add(address)
    return found


def test_every_stack_port_listens_on_loopback_only(stack: LocalStack) -> None:
    ports = stack.config.ports
    expected = {
        "nginx": ports.nginx, "gateway": ports.gateway, "gateway gRPC": ports.gateway_grpc,
        "feedback writer": ports.feedback, "postgres": ports.postgres, "triton http": ports.triton_http,
        "triton grpc": ports.triton_grpc, "triton metrics": ports.triton_metrics, "prometheus": ports.prometheus,
    }  # fmt: skip
    table = listening()
    loopback = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
    for name, port in expected.items():
        assert port in table, f"{name} is not listening on {port}"
        assert table[port] <= loopback, f"{name} listens on {sorted(table[port])}"
