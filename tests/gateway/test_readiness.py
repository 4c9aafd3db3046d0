"""The gateway's /readyz reflects model health, not only Triton's word: a killed python-backend stub of a step that
one experiment group uses turns it to 503 naming that group's model; after the model is loaded again it is 200
(issue 14: a killed stub left its ensembles answering 503 for good while /readyz said ready)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
from tests_support import stub_pids

from recsys.stack.local import LocalStack

pytestmark = pytest.mark.stack

#: The scorer step only group A's ensemble (recsys_a) uses.
STEP, BROKEN, HEALTHY = "recsys_scorer_torchscript", "recsys_a", "recsys_b"


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
    pids = stub_pids(stack.triton, STEP)
    assert pids, f"no python-backend stub of {STEP} under Triton {stack.triton.pid}"
    with contextlib.ExitStack() as fault:
        if stack.watchdog is not None:  # the stack's watchdog repairs a dead stub: watch the fault before it does
            fault.enter_context(stack.watchdog.paused())
        _kill_and_restore(stack, pids)
    assert readiness_until(stack, 200, 30)["problems"] == {}
    alive = liveness(stack)
    assert alive.returncode == 0, alive.stderr


def liveness(stack: LocalStack) -> subprocess.CompletedProcess[str]:
    """``python -m serving.liveness`` as the Triton pod runs it: the key and port from its environment."""
    env = os.environ | {
        "RECSYS_TRITON_HTTP_PORT": str(stack.config.ports.triton_http),
        "RECSYS_TRITON_API_KEY": stack.triton_key,
    }
    return subprocess.run(
        [sys.executable, "-m", "serving.liveness"], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def _kill_and_restore(stack: LocalStack, pids: list[int]) -> None:
    try:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        broken = readiness_until(stack, 503, 10)  # the probe is cached for 1 s; the kill shows on the next one
        assert broken["ready"] is False
        assert broken["models"] == {BROKEN: False, HEALTHY: True}
        assert "inference failed" in broken["problems"][BROKEN]
        dead = liveness(stack)  # the pod's liveness probe (EKS) sees the same fault, and names the step
        assert dead.returncode == 1, dead.stderr
        assert f"the python stub of {STEP} is dead" in dead.stderr
    finally:  # Triton does not restart a dead stub by itself (a plain load of an unchanged config is skipped)
        stack.triton.control.restart_model(STEP)
