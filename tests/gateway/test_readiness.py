"""The gateway's /readyz reflects model health, not only Triton's word: a killed python-backend stub of a step that
one experiment group uses turns it to 503 naming that group's model; after the model is loaded again it is 200
(issue 14: a killed stub left its ensembles answering 503 for good while /readyz said ready)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from recsys.stack.local import LocalStack

pytestmark = pytest.mark.stack

#: The scorer step only group A's ensemble (recsys_a) uses.
STEP, BROKEN, HEALTHY = "recsys_scorer_torchscript", "recsys_a", "recsys_b"


def stub_pids(parent: int, model: str) -> list[int]:
    """The python-backend stub processes Triton runs for ``model`` (their command line names the instance)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"triton_python_backend_stub" in args[0] and any(model.encode() in a for a in args):
            found.append(int(proc.name))
    return found


def readiness_until(stack: LocalStack, status: int, within_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        answer = httpx.get(stack.gateway_url + "/readyz", timeout=5)
        if answer.status_code == status:
            body: dict[str, Any] = answer.json()
            return body
        assert time.monotonic() < deadline, f"/readyz still {answer.status_code}: {answer.text}"
        time.sleep(0.1)


def test_a_killed_stub_makes_the_gateway_not_ready_and_a_reload_ready_again(stack: LocalStack) -> None:
    assert readiness_until(stack, 200, 5)["ready"] is True
    triton_pid = stack.triton.pid
    assert triton_pid is not None
    pids = stub_pids(triton_pid, STEP)
    assert pids, f"no python-backend stub of {STEP} under Triton {triton_pid}"
    with contextlib.ExitStack() as fault:
        if stack.watchdog is not None:  # the stack's watchdog repairs a dead stub: watch the fault before it does
            fault.enter_context(stack.watchdog.paused())
        _kill_and_restore(stack, pids)
    assert readiness_until(stack, 200, 30)["problems"] == {}


def _kill_and_restore(stack: LocalStack, pids: list[int]) -> None:
    try:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        broken = readiness_until(stack, 503, 10)  # the probe is cached for 1 s; the kill shows on the next one
        assert broken["ready"] is False
        assert broken["models"] == {BROKEN: False, HEALTHY: True}
        assert "inference failed" in broken["problems"][BROKEN]
    finally:  # Triton does not restart a dead stub by itself (a plain load of an unchanged config is skipped)
        stack.triton.control.restart_model(STEP)
