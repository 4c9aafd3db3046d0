"""The state file and ``stack down`` on small real processes: exactly the recorded processes are stopped (a pid
that now names another process is never signalled), also when the supervisor is gone; servers die with a
supervisor that is SIGKILLed. No stack needed (tests/stack/test_stack_cli.py runs the real one)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from recsys.stack.down import stop_stack
from recsys.stack.pids import ProcessId
from recsys.stack.state import ServiceRecord, StackState, StackStateError, read_state, write_state

PYTHON = sys.executable
#: a server that stops its child on SIGTERM (as PostgreSQL, NGINX and Triton do)
SERVER = (
    "import signal, subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
    "def stop(signum, frame):\n"
    "    child.terminate(); child.wait(); sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "print('up', flush=True)\n"
    "time.sleep(120)\n"
)


def spawn_server() -> subprocess.Popen[bytes]:
    """A server in its own session (as the supervisor starts them), up once it has printed."""
    process = subprocess.Popen([PYTHON, "-c", SERVER], stdout=subprocess.PIPE, start_new_session=True)
    assert process.stdout is not None
    assert process.stdout.readline() == b"up\n"
    process.stdout.close()
    return process


def record(name: str, process: ProcessId) -> ServiceRecord:
    return ServiceRecord(name=name, process=process, ports={}, health="tcp://127.0.0.1:1",
                         stop_signal=int(signal.SIGTERM), log="")  # fmt: skip


def state_of(supervisor: ProcessId, *services: ServiceRecord) -> StackState:
    return StackState(supervisor=supervisor, started_at=datetime.now(UTC), phase="up", workdir="w", repository="r",
                      experiment="e", ports={}, versions={"factor": 1}, services=services)  # fmt: skip


def gone_supervisor() -> ProcessId:
    process = subprocess.Popen([PYTHON, "-c", "pass"])
    seen = ProcessId.of(process.pid)
    assert seen is not None
    process.wait()
    return seen


def test_state_round_trips_and_a_bad_file_is_one_line(tmp_path: Path) -> None:
    me = ProcessId.of(os.getpid())
    assert me is not None
    assert me.alive()
    path = tmp_path / "state.json"
    state = state_of(me, record("server", me))
    write_state(path, state)
    assert read_state(path) == state
    assert read_state(tmp_path / "none.json") is None
    path.write_text('{"supervisor": 3}')
    with pytest.raises(StackStateError, match="is not valid") as info:
        read_state(path)
    assert "\n" not in str(info.value)


def test_down_after_the_supervisor_died_stops_exactly_the_recorded_servers(tmp_path: Path) -> None:
    recorded, bystander = spawn_server(), spawn_server()
    try:
        server = ProcessId.of(recorded.pid)
        other = ProcessId.of(bystander.pid)
        assert server is not None
        assert other is not None
        # the bystander's pid, recorded for a process that started at another time: the kernel reused the pid
        reused = ProcessId(pid=other.pid, start_ticks=other.start_ticks - 1, command=other.command)
        path = tmp_path / "state.json"
        write_state(path, state_of(gone_supervisor(), record("server", server), record("old", reused)))
        report = stop_stack(path, service_timeout_s=10)
        assert report is not None
        assert recorded.wait(10) == 0  # its own stop signal: it stopped its child and exited cleanly
        assert not server.alive()
        assert bystander.poll() is None, "a process whose pid was reused was signalled"
        assert not path.exists()
        assert report.were_running == [f"server (pid {server.pid})"]
        assert "had died" in report.summary()
        assert stop_stack(path) is None
    finally:
        for process in (recorded, bystander):
            process.kill()
            process.wait()


def test_a_server_dies_with_its_supervisor(tmp_path: Path) -> None:
    """SIGKILL of the supervisor (nothing runs in it afterwards): its server gets the parent-death signal."""
    supervisor_code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from recsys.stack.process import ServiceProcess\n"
        "log = Path(sys.argv[1])\n"
        f"server = ServiceProcess('server', [sys.executable, '-c', {SERVER!r}], log_path=log,\n"
        "                        ready=lambda: log.exists() and 'up' in log.read_text()).start(30)\n"
        "print(server.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    supervisor = subprocess.Popen(
        [PYTHON, "-c", supervisor_code, str(tmp_path / "server.log")], stdout=subprocess.PIPE, text=True
    )
    assert supervisor.stdout is not None
    pid = int(supervisor.stdout.readline())
    supervisor.stdout.close()
    server = ProcessId.of(pid)
    assert server is not None
    from recsys.stack.memory import descendants

    family = [seen for seen in map(ProcessId.of, descendants(pid)) if seen is not None]
    assert len(family) == 2  # the server and its child
    supervisor.kill()
    supervisor.wait()
    deadline = time.monotonic() + 10
    while any(seen.alive() for seen in family) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [seen.pid for seen in family if seen.alive()], "the server outlived its supervisor"
