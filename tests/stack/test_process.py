"""The one supervisor (``recsys.stack.process``) on small real processes: readiness, the log, a stop that reaches
the whole process group, SIGKILL after the timeout, the cleanup after an unclean exit. No stack needed."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from recsys.core.errors import RecsysError
from recsys.stack.memory import descendants, group_members, process_memory, tree_memory
from recsys.stack.ports import free_port, free_ports
from recsys.stack.process import NotReadyError, ServiceError, ServiceProcess

PYTHON = sys.executable
#: a parent that sleeps beside a sleeping child, and ignores SIGTERM when told to
PARENT_AND_CHILD = (
    "import signal, subprocess, sys, time\n"
    "if sys.argv[1] == 'stubborn': signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "print('up', flush=True)\n"
    "time.sleep(60)\n"
)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def log_says(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text()


def test_ready_when_its_url_answers_and_stopped_with_its_signal(tmp_path: Path) -> None:
    port = free_port()
    command = [PYTHON, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    server = ServiceProcess("http", command, ready_url=f"http://127.0.0.1:{port}/", log_path=tmp_path / "http.log")
    with server:
        assert server.is_running()
        assert server.pid is not None
        assert server.running_pids() == [server.pid]
    assert not server.is_running()
    assert server.returncode == -signal.SIGTERM
    assert server.pid is None


def test_stop_reaches_the_whole_group_and_kills_what_ignores_it(tmp_path: Path) -> None:
    log = tmp_path / "stubborn.log"
    cleaned: list[bool] = []
    server = ServiceProcess(
        "stubborn",
        [PYTHON, "-c", PARENT_AND_CHILD, "stubborn"],
        ready=lambda: log_says(log, "up"),
        log_path=log,
        stop_timeout_s=0.5,
        on_unclean_exit=lambda: cleaned.append(True),
    ).start(30)
    assert server.pid is not None
    members = server.running_pids()
    assert len(members) == 2  # the server and its child, one process group
    assert set(descendants(server.pid)) == set(members)
    began = time.monotonic()
    assert server.stop() == -signal.SIGKILL
    assert time.monotonic() - began < 10
    assert not [pid for pid in members if alive(pid)]
    assert cleaned == [True]


def test_signal_to_the_leader_only_leaves_the_rest_a_grace_period(tmp_path: Path) -> None:
    log = tmp_path / "leader.log"
    server = ServiceProcess(
        "leader",
        [PYTHON, "-c", PARENT_AND_CHILD, "polite"],
        ready=lambda: log_says(log, "up"),
        log_path=log,
        signal_group=False,
        group_grace_s=0.2,
    ).start(30)
    members = server.running_pids()
    assert server.stop() == -signal.SIGTERM
    assert not [pid for pid in members if alive(pid)]  # the child got SIGKILL after the grace period


def test_exit_while_starting_is_one_clear_error_with_the_log(tmp_path: Path) -> None:
    server = ServiceProcess(
        "failing",
        [PYTHON, "-c", "import sys; print('no config here'); sys.exit(3)"],
        ready=lambda: False,
        log_path=tmp_path / "failing.log",
    )
    with pytest.raises(NotReadyError, match="failing exited with status 3 while starting") as info:
        server.start(30)
    assert info.value.reason == "failing exited with status 3 while starting"
    assert "no config here" in str(info.value)
    assert isinstance(info.value, RecsysError)
    assert not server.is_running()


def test_not_ready_in_time_stops_it(tmp_path: Path) -> None:
    server = ServiceProcess(
        "slow", [PYTHON, "-c", "import time; time.sleep(60)"], ready=lambda: False, log_path=tmp_path / "slow.log"
    )
    with pytest.raises(NotReadyError, match=r"slow was not ready after 0\.5 s"):
        server.start(0.5)
    assert not server.is_running()


def test_a_missing_binary_is_a_service_error(tmp_path: Path) -> None:
    server = ServiceProcess("ghost", [str(tmp_path / "no-such-binary")], log_path=tmp_path / "ghost.log")
    with pytest.raises(ServiceError, match="cannot start ghost"):
        server.start()


def test_kill_is_a_crash_and_start_runs_it_again(tmp_path: Path) -> None:
    log = tmp_path / "again.log"
    server = ServiceProcess(
        "again", [PYTHON, "-c", PARENT_AND_CHILD, "polite"], ready=lambda: log_says(log, "up"), log_path=log
    ).start(30)
    first = server.running_pids()
    server.kill()
    assert server.returncode == -signal.SIGKILL
    assert not [pid for pid in first if alive(pid)]
    log.write_text("")
    server.start(30)
    try:
        assert server.is_running()
        assert server.pid not in first
    finally:
        server.stop()


def test_free_ports_are_distinct_and_memory_is_read_from_proc() -> None:
    ports = free_ports(8)
    assert len(set(ports)) == 8
    me = os.getpid()
    assert process_memory(me).rss_kib > 0
    assert me in group_members(os.getpgid(0))
    memory = tree_memory(me)
    assert me in memory.pids
    assert memory.rss_mib > 0


#: prints the parent-death signal the kernel holds for it (prctl PR_GET_PDEATHSIG), then sleeps
PRINT_DEATH_SIGNAL = (
    "import ctypes, time\n"
    "signum = ctypes.c_int()\n"
    "ctypes.CDLL(None).prctl(2, ctypes.byref(signum), 0, 0, 0)\n"
    "print('death signal', signum.value, flush=True)\n"
    "time.sleep(60)\n"
)


def test_a_server_dies_with_the_main_thread_but_not_with_a_worker_thread(tmp_path: Path) -> None:
    """The kernel ties the parent-death signal to the launching thread: from the main thread a server gets its stop
    signal (it dies with its supervisor); from a worker thread, which ends long before it, none."""
    import threading

    def launch(name: str) -> tuple[ServiceProcess, Path]:
        log = tmp_path / f"{name}.log"
        server = ServiceProcess(name, [PYTHON, "-c", PRINT_DEATH_SIGNAL], ready=lambda: log_says(log, "signal"),
                                log_path=log, stop_signal=signal.SIGINT)  # fmt: skip
        return server, log

    main, main_log = launch("main")
    worker, worker_log = launch("worker")
    main.start(30)
    thread = threading.Thread(target=worker.start, args=(30,))
    thread.start()
    thread.join()
    try:
        assert main_log.read_text().split() == ["death", "signal", str(int(signal.SIGINT))]
        assert worker_log.read_text().split() == ["death", "signal", "0"]
        assert worker.is_running()  # its thread has ended
    finally:
        main.stop()
        worker.stop()
