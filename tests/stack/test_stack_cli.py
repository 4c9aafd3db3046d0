"""``recsys stack up|status|down`` as an operator runs them: the real CLI in subprocesses, every port chosen by
``RECSYS_*`` environment variables (free ones), the real servers. A second ``stack up``, a busy ``serve triton``,
``publish --load`` into another repository and an experiment naming a missing model are one-line errors that start
nothing and leave the running stack alone; SIGKILL of the supervisor leaves no server behind, and ``stack down``
then cleans up; ``stack down`` of a live stack stops exactly its processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recsys.stack.memory import descendants
from recsys.stack.pids import ProcessId
from recsys.stack.ports import free_ports, port_holders

pytestmark = pytest.mark.stack

PORT_SETTINGS = (
    "RECSYS_NGINX_PORT", "RECSYS_GATEWAY_PORT", "RECSYS_GATEWAY_GRPC_PORT", "RECSYS_FEEDBACK_PORT",
    "RECSYS_TRITON_HTTP_PORT", "RECSYS_TRITON_GRPC_PORT", "RECSYS_TRITON_METRICS_PORT",
)  # fmt: skip
#: a stack's start on the shared 2-core machine takes ~20-40 s; this bounds a hang
UP_TIMEOUT_S = 240
#: every server must be gone this soon after its supervisor was SIGKILLed (measured: ~5 s, Triton's stop)
ORPHAN_BOUND_S = 30


def recsys(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "recsys", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def status(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    result = recsys(env, "stack", "status", "--json", "-")
    return result.returncode, json.loads(result.stdout)


def postgres_dir(tmp_path: Path) -> Path:
    """A fresh data folder that the ``postgres`` user can reach when the tests run as root."""
    if os.geteuid() == 0:
        return Path(tempfile.mkdtemp(prefix="recsys-pg-stack-cli-", dir="/var/tmp"))
    return tmp_path / "pg"


@pytest.fixture(scope="module")
def env(served_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of an operator whose stack runs on other ports than the defaults (free ones)."""
    work = tmp_path_factory.mktemp("stack-cli")
    repository = work / "repository"
    shutil.copytree(served_repository, repository)  # publish --load adds versions: a copy of our own
    *ports, postgres = free_ports(len(PORT_SETTINGS) + 1)
    pg_dir = postgres_dir(work)
    env = dict(os.environ) | dict(zip(PORT_SETTINGS, map(str, ports), strict=True)) | {
        "RECSYS_DATABASE_URL": f"postgresql://recsys@127.0.0.1:{postgres}/recsys",
        "RECSYS_STACK_DIR": str(work / "stack"),
        "RECSYS_POSTGRES_DIR": str(pg_dir),
        "RECSYS_MODEL_REPOSITORY": str(repository),
        "RECSYS_LOG_LEVEL": "WARNING",
    }  # fmt: skip
    yield env
    shutil.rmtree(pg_dir, ignore_errors=True)
    for beside in (".log", ".password"):  # LocalPostgres keeps its log and password next to the data folder
        pg_dir.with_name(pg_dir.name + beside).unlink(missing_ok=True)


def start_stack(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``recsys stack up`` in the background, returned once ``stack status`` says it is healthy."""
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "recsys", "stack", "up"], env=env, stdout=out,
                                   stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + UP_TIMEOUT_S
    while status(env)[0] != 0:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"stack up did not come up (status {process.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return process


@pytest.fixture(scope="module")
def first_stack(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[bytes]]:
    process = start_stack(env, tmp_path_factory.mktemp("logs") / "up.log")
    yield process
    if process.poll() is None:  # a test failed before the kill test ended it
        recsys(env, "stack", "down", timeout=180)
        process.wait(30)


def recorded(state: dict[str, Any]) -> dict[str, int]:
    return {service["name"]: service["pid"] for service in state["services"]}


def test_stack_up_takes_every_port_from_the_settings(env: dict[str, str], first_stack: subprocess.Popen[bytes]) -> None:
    code, state = status(env)
    assert code == 0
    assert state["up"]
    assert state["healthy"]
    assert state["supervisor_pid"] == first_stack.pid
    assert state["repository"] == env["RECSYS_MODEL_REPOSITORY"]
    assert state["versions"] == {"factor": 1}
    assert state["triton_models"]["recsys_a"] == ["1"]
    # issue 17: version 1 (400 items, the default policy) has no approximate index: recsys_ann is not loaded
    assert "recsys_ann" not in state["triton_models"]
    assert "recsys_scorer_ann" not in state["triton_models"]
    why = state["not_served"]["recsys_ann"]
    assert "version 1 of the factor models was published without an approximate index" in why
    pids = recorded(state)
    assert set(pids) == {"postgresql", "tritonserver", "feedback-writer", "gateway-0", "nginx"}
    families = {name: set(descendants(pid)) for name, pid in pids.items()}
    wanted = {setting: int(env[setting]) for setting in PORT_SETTINGS}
    wanted["RECSYS_DATABASE_URL"] = int(env["RECSYS_DATABASE_URL"].rsplit(":", 1)[1].split("/")[0])
    for setting, port in wanted.items():
        holders = {holder.pid for holder in port_holders(port)}
        assert holders, f"nothing listens on {port} ({setting})"
        assert any(holders & family for family in families.values()), f"{setting}: {port} is held by {holders}"


def test_a_second_stack_up_starts_nothing_and_leaves_the_first_alone(
    env: dict[str, str], first_stack: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    before = recorded(status(env)[1])
    line = one_line_error(recsys(env, "stack", "up"))
    assert f"a stack is already up from {env['RECSYS_STACK_DIR']} (supervisor pid {first_stack.pid}" in line
    # from another folder, on another PostgreSQL folder: the first port it would bind is the first stack's NGINX
    elsewhere = env | {"RECSYS_STACK_DIR": str(tmp_path / "stack"), "RECSYS_POSTGRES_DIR": str(tmp_path / "pg")}
    line = one_line_error(recsys(elsewhere, "stack", "up"))
    assert f"port {env['RECSYS_NGINX_PORT']} for NGINX (RECSYS_NGINX_PORT) is in use by pid {before['nginx']}" in line
    assert not (tmp_path / "pg").exists()
    assert not (tmp_path / "stack" / "state.json").exists()
    code, state = status(env)
    assert code == 0
    assert recorded(state) == before  # the same processes, all healthy


def test_serve_triton_on_a_busy_port_is_one_line(env: dict[str, str], first_stack: subprocess.Popen[bytes]) -> None:
    triton = recorded(status(env)[1])["tritonserver"]
    line = one_line_error(recsys(env, "serve", "triton"))
    assert f"port {env['RECSYS_TRITON_HTTP_PORT']} for Triton HTTP" in line
    assert f"in use by pid {triton}" in line


def test_publish_load_tells_only_what_it_checked(
    env: dict[str, str], first_stack: subprocess.Popen[bytes], served_run: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other-repository"
    line = one_line_error(recsys(env, "publish", str(served_run), "--repository", str(other), "--load"))
    assert f"is the local stack's and serves {env['RECSYS_MODEL_REPOSITORY']}, not {other}" in line
    assert not other.exists()  # refused before anything was published
    result = recsys(env, "publish", str(served_run), "--load")
    assert result.returncode == 0, result.stderr
    assert "(the local stack's, serving" in result.stdout
    assert "now serves version 2 of recsys_a" in " ".join(result.stdout.split())
    assert "no approximate scorer (400 items, below RECSYS_ANN_THRESHOLD_ITEMS" in " ".join(result.stdout.split())
    assert status(env)[1]["triton_models"]["recsys_scorer_onnx"] == ["2"]


def test_an_experiment_naming_a_missing_model_starts_nothing(
    env: dict[str, str], first_stack: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(
        "name: typo\ngroups:\n  - {name: A, model: recsys_a, share: 50}\n  - {name: B, model: recsys_bb, share: 50}\n"
    )
    elsewhere = env | {"RECSYS_STACK_DIR": str(tmp_path / "stack"), "RECSYS_POSTGRES_DIR": str(tmp_path / "pg")}
    line = one_line_error(recsys(elsewhere, "stack", "up", "--experiment", str(experiment)))
    assert "gives group B the model 'recsys_bb', which the model repository" in line
    assert not (tmp_path / "pg").exists()


def test_sigkill_of_the_supervisor_leaves_no_server_and_down_cleans_up(
    env: dict[str, str], first_stack: subprocess.Popen[bytes]
) -> None:
    pids = recorded(status(env)[1])
    everything = [seen for pid in pids.values() for seen in map(ProcessId.of, descendants(pid)) if seen is not None]
    assert len(everything) > len(pids)  # NGINX's worker, PostgreSQL's backends, Triton's stubs
    first_stack.send_signal(signal.SIGKILL)
    first_stack.wait()
    deadline = time.monotonic() + ORPHAN_BOUND_S
    while any(seen.alive() for seen in everything) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [f"{seen.pid} {seen.command[:60]}" for seen in everything if seen.alive()]
    assert not left, f"outlived their supervisor by {ORPHAN_BOUND_S} s: {left}"
    code, state = status(env)
    assert code == 1
    assert not state["supervisor_alive"]
    assert not any(service["alive"] for service in state["services"])
    result = recsys(env, "stack", "down")
    assert result.returncode == 0, result.stderr
    assert "had already stopped; its state file is removed" in result.stdout
    assert status(env) == (3, {"state_file": str(Path(env["RECSYS_STACK_DIR"]) / "state.json"), "up": False,
                               "healthy": False})  # fmt: skip


def test_stack_down_stops_exactly_the_stacks_processes(env: dict[str, str], tmp_path: Path) -> None:
    process = start_stack(env, tmp_path / "up.log")
    try:
        pids = recorded(status(env)[1])
        everything = [seen for pid in pids.values() for seen in map(ProcessId.of, descendants(pid)) if seen]
        result = recsys(env, "stack", "down", timeout=180)
        assert result.returncode == 0, result.stderr
        assert f"supervisor pid {process.pid} stopped it" in result.stdout
        assert process.wait(30) == 0
        assert "stack stopped" in (tmp_path / "up.log").read_text()
        assert not [seen.pid for seen in everything if seen.alive()]
        assert status(env)[0] == 3
    finally:
        if process.poll() is None:
            process.kill()
            recsys(env, "stack", "down", timeout=180)
