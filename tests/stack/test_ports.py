"""The stack's ports: every one chosen from the settings (or picked free) and checked before anything starts, a
taken one named with the process that holds it. Real sockets and processes; no stack needed."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from recsys.core.errors import ConfigError
from recsys.core.settings import Settings
from recsys.stack.local import LocalStack, StackConfig, StackPorts
from recsys.stack.ports import PortInUseError, check_ports_free, free_port, port_holders, port_in_use

LISTENER = (
    "import socket, sys, time\n"
    "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
    "print('listening', flush=True); time.sleep(60)\n"
)


@pytest.fixture
def held_port(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """A port another process listens on (its script's name marks it)."""
    port = free_port()
    script = tmp_path / "marker_of_the_holder.py"
    script.write_text(LISTENER)
    holder = subprocess.Popen([sys.executable, str(script), str(port)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "listening"
        yield port, holder
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_a_taken_port_is_one_line_naming_the_process_that_holds_it(
    held_port: tuple[int, subprocess.Popen[str]],
) -> None:
    port, holder = held_port
    assert port_in_use(port)
    assert [h.pid for h in port_holders(port)] == [holder.pid]
    with pytest.raises(PortInUseError) as info:
        check_ports_free({"NGINX (RECSYS_NGINX_PORT)": port, "the gateway REST": free_port()})
    message = str(info.value)
    assert "\n" not in message
    assert f"port {port} for NGINX (RECSYS_NGINX_PORT) is in use by pid {holder.pid}" in message
    assert "marker" in message  # its command line (shortened)


def test_a_port_given_twice_or_out_of_range_is_refused() -> None:
    port = free_port()
    with pytest.raises(PortInUseError, match=f"port {port} is given to both NGINX and the gateway"):
        check_ports_free({"NGINX": port, "the gateway": port})
    with pytest.raises(PortInUseError, match=r"outside 1\.\.65535"):
        check_ports_free({"NGINX": 70000})


def test_a_closed_server_port_is_free_again() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert port_in_use(port)
    assert not port_in_use(port)
    check_ports_free({"again": port})


def test_free_ports_cover_every_gateway_and_are_distinct() -> None:
    ports = StackPorts.free(gateways=3)
    named = ports.named(3, prometheus=True)
    assert len(named) == 9 + 2 * 2
    assert len(set(named.values())) == len(named)  # the extra gateways' ports are picked too, not derived
    assert ports.gateway_ports(2) == ports.more_gateways[1]


def test_every_port_comes_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "RECSYS_NGINX_PORT": 18088, "RECSYS_GATEWAY_PORT": 18080, "RECSYS_GATEWAY_GRPC_PORT": 15051,
        "RECSYS_FEEDBACK_PORT": 18090, "RECSYS_TRITON_HTTP_PORT": 18000, "RECSYS_TRITON_GRPC_PORT": 18001,
        "RECSYS_TRITON_METRICS_PORT": 18002, "RECSYS_PROMETHEUS_PORT": 19090,
    }  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("RECSYS_DATABASE_URL", "postgresql://recsys@127.0.0.1:15433/recsys")
    ports = StackPorts.from_settings(Settings())
    assert ports == StackPorts(18088, 18080, 15051, 18090, 15433, 18000, 18001, 18002, 19090)
    # gateway 2 sits beside the first one's ports, and is checked like every other port
    named = ports.named(2, prometheus=True)
    assert named["gateway 2 REST (RECSYS_GATEWAY_PORT + 100)"] == 18180
    assert named["gateway 2 gRPC (RECSYS_GATEWAY_GRPC_PORT + 1)"] == 15052
    assert sorted(named.values()) == sorted([*env.values(), 15433, 18180, 15052])


def test_the_database_url_must_name_the_stacks_own_postgres(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_DATABASE_URL", "postgresql://recsys@db.example.com:5432/recsys")
    with pytest.raises(ConfigError, match=r"points at db\.example\.com"):
        StackPorts.from_settings(Settings())


def test_a_stack_with_a_taken_extra_gateway_port_starts_nothing(
    held_port: tuple[int, subprocess.Popen[str]], tmp_path: Path, served_repository: Path
) -> None:
    port, holder = held_port
    ports = StackPorts.free()
    ports = StackPorts(**{**ports.__dict__, "more_gateways": ((port, free_port()),)})
    stack = LocalStack(
        StackConfig(model_repository=served_repository, workdir=tmp_path, ports=ports, postgres_dir=tmp_path / "pg",
                    gateways=2)
    )  # fmt: skip
    with pytest.raises(PortInUseError, match=f"port {port} for gateway 2 REST .* in use by pid {holder.pid}"):
        stack.start()
    assert not (tmp_path / "pg").exists()  # PostgreSQL was not even initialised
    assert not stack.state_path.exists()
