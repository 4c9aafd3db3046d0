"""Faults under load, against the whole local stack: Triton killed and restarted, a python-backend stub killed (the
stack's watchdog reloads its model), a gateway restarted behind NGINX, bad model versions published. (PostgreSQL
stopped for 30 s under traffic and the writer killed right after its acks are in tests/feedback/test_writer_live.py.)"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from tests_support import stub_pids

from recsys.core.errors import RecsysError
from recsys.stack.local import LocalStack
from trainer.triton.family import FACTOR
from trainer.triton.publish import publish
from trainer.triton.repository import load_all, versions

pytestmark = pytest.mark.stack


class Load(threading.Thread):
    """Closed-loop /recommend traffic from a few clients; records (status, seconds, body) of every answer."""

    def __init__(self, url: str, clients: int = 4) -> None:
        super().__init__(daemon=True)
        self.url, self.clients = url, clients
        self.stopping = threading.Event()
        self.answers: list[tuple[int, float, bytes]] = []
        self.finished: list[float] = []  # time.monotonic() at each answer, in the order of ``answers``
        self._lock = threading.Lock()

    def _client(self, n: int) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            i = 0
            while not self.stopping.is_set():
                user = str(1 + (n * 97 + i) % 300)
                start = time.monotonic()
                try:
                    response = client.post("/recommend", json={"user_id": user}, headers={"X-User-Id": user})
                    answer = (response.status_code, time.monotonic() - start, response.content)
                except httpx.HTTPError as exc:
                    answer = (-1, time.monotonic() - start, repr(exc).encode())
                with self._lock:
                    self.answers.append(answer)
                    self.finished.append(time.monotonic())
                i += 1

    def run(self) -> None:
        threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(self.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def wait_for(self, more: int, timeout_s: float = 30.0) -> None:
        target, deadline = self.count() + more, time.monotonic() + timeout_s
        while self.count() < target:
            assert time.monotonic() < deadline, "traffic stalled"
            time.sleep(0.01)

    def __enter__(self) -> Load:
        self.start()
        self.wait_for(20)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.join(30)


def test_triton_killed_under_load_gives_503_within_the_deadline_and_recovers(stack: LocalStack) -> None:
    with Load(stack.nginx_url) as load:
        before = load.count()
        os.killpg(stack.triton.pid or 0, signal.SIGKILL)  # the server and its python stubs, no cleanup
        load.wait_for(50)  # traffic while Triton is dead
        during = load.answers[before:]
        stack.triton.stop()  # reaps the dead process group, removes its shared memory
        stack.triton.start()
        load_all(stack.triton, stack.config.model_repository)
        deadline = time.monotonic() + 30
        while load.answers[-1][0] != 200:
            assert time.monotonic() < deadline, "no recovery after Triton came back"
            time.sleep(0.05)
        load.wait_for(20)
    statuses = Counter(status for status, _, _ in load.answers)
    assert set(statuses) <= {200, 503}, statuses
    assert sum(1 for status, _, _ in during if status == 503) >= 20
    assert max(seconds for _, seconds, _ in load.answers) < 2.0  # never a hang: 500 ms deadline (+ queueing)
    assert all(b'"unavailable"' in body for status, _, body in load.answers if status == 503)
    assert load.answers[-1][0] == 200


def test_gateway_restarted_behind_nginx_loses_no_request(stack: LocalStack) -> None:
    assert stack.config.gateways >= 2
    with Load(stack.nginx_url) as load:
        stack.gateways[0].stop()  # SIGTERM: it drains and exits; NGINX moves to the other gateway
        load.wait_for(100)
        stack.gateways[0].start()
        load.wait_for(100)
    statuses = Counter(status for status, _, _ in load.answers)
    assert set(statuses) <= {200, 502}, statuses
    assert statuses[502] <= 2, statuses  # NGINX retries the next upstream; at most a request caught mid-close
    assert all(b'"bad_gateway"' in body for status, _, body in load.answers if status == 502)


def _broken_copy(run: Path, target: Path, how: str) -> Path:
    from trainer.artifacts import MODEL_FILE
    from trainer.models.base import Recommender

    shutil.copytree(run, target)
    model = Recommender.load(target / MODEL_FILE)
    if how == "nan":
        model.item_factors[3, 1] = float("nan")  # type: ignore[attr-defined]
    else:
        model.item_factors = model.item_factors[:, :-1].clone()  # type: ignore[attr-defined]
    model.save(target / MODEL_FILE)
    return target


def test_bad_model_versions_are_refused_while_the_old_one_keeps_serving(
    stack: LocalStack, served_run: Path, tmp_path: Path
) -> None:
    repository = stack.config.model_repository
    before = versions(repository, FACTOR)
    with Load(stack.gateway_url, clients=2) as load:
        for how in ("nan", "shapes"):
            broken = _broken_copy(served_run, tmp_path / how, how)
            with pytest.raises(RecsysError) as refused:
                publish(broken, repository)
            assert "item_factors" in str(refused.value)
        load.wait_for(50)
    assert versions(repository, FACTOR) == before
    assert not list(repository.glob(".publish-*"))
    assert {status for status, _, _ in load.answers} == {200}
    served = {httpx.post(stack.gateway_url + "/recommend", json={"user_id": "1"}).json()["model_version"]}
    assert served == {str(before[-1])}


def test_a_damaged_newest_version_is_refused_at_a_restart_and_the_previous_one_served(
    stack: LocalStack, served_run: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression (the adversarial run): a truncated ONNX file in the newest version was refused by the hot swap,
    but a Triton restart then loaded nothing at all. publish records every file's checksum; a start serves the
    newest version whose files match and that loads, and says which version it refused and why."""
    from serving.contract import ONNX_FILE
    from trainer.triton.family import SCORER_ONNX
    from trainer.triton.repository import activate

    repository = stack.config.model_repository
    previous = versions(repository, FACTOR)[-1]
    newest = publish(served_run, repository).version
    try:
        activate(stack.triton, repository, FACTOR, newest)
        onnx = repository / SCORER_ONNX / str(newest) / ONNX_FILE
        onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])
        with pytest.raises(RecsysError, match="does not match its checksum"):  # the hot swap refuses it too
            activate(stack.triton, repository, FACTOR, newest)
        with caplog.at_level(logging.WARNING, logger="trainer.triton.repository"):
            stack.restart_triton()  # what the watchdog's last resort and a stack restart do
        assert stack.versions[FACTOR.name] == previous
        answer = httpx.post(stack.gateway_url + "/recommend", json={"user_id": "1"}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == str(previous)
        assert f"refused version {newest} of the factor models" in caplog.text
        assert f"{SCORER_ONNX}/{newest}/{ONNX_FILE} does not match its checksum" in caplog.text
        assert f"serving version {previous} of the factor models instead of the newer {newest}" in caplog.text
    finally:
        for model in FACTOR.steps:
            shutil.rmtree(repository / model / str(newest), ignore_errors=True)


#: The recovery the README states for a killed python-backend stub, under load: the watchdog probes every 1 s and
#: loads the model again (2.4-2.7 s on an idle machine, from the first failed probe); on the 2 shared cores busy with
#: other work the last failed request came 8.6 s after the kill.
STUB_RECOVERY_S = 15.0


def test_a_killed_python_stub_is_reloaded_by_the_watchdog_within_the_stated_time_under_load(
    stack: LocalStack,
) -> None:
    """Regression (the adversarial run): SIGKILL of the lookup's python stub left both ensembles answering 503 for
    good (Triton keeps the model READY and never restarts the stub). The stack's watchdog notices it from a real
    inference probe, loads the model again, and the ensembles answer within STUB_RECOVERY_S."""
    watchdog = stack.watchdog
    assert watchdog is not None
    reloads = watchdog.stats.reloads
    (stub,) = stub_pids(stack.triton, "recsys_lookup")
    with Load(stack.nginx_url) as load:
        start = load.count()
        killed_at = time.monotonic()
        os.kill(stub, signal.SIGKILL)
        deadline = killed_at + 60
        while watchdog.stats.reloads == reloads or load.answers[-1][0] != 200:
            assert time.monotonic() < deadline, f"no recovery: {watchdog.stats}"
            time.sleep(0.05)
        load.wait_for(100)
    answers, finished = load.answers[start:], load.finished[start:]
    failed = [n for n, (status, _, _) in enumerate(answers) if status != 200]
    assert watchdog.stats.reloads == reloads + 1
    assert stub_pids(stack.triton, "recsys_lookup") not in ([], [stub])  # a new stub serves
    assert {status for status, _, _ in answers} <= {200, 503}
    assert all(b'"error"' in answers[n][2] for n in failed)
    outage = (finished[failed[-1]] - killed_at) if failed else 0.0
    print(
        f"stub killed under load: {len(failed)} of {len(answers)} requests failed, the last {outage:.2f} s after "
        f"the kill; watchdog recoveries {watchdog.stats.recoveries_s}"
    )
    assert outage < STUB_RECOVERY_S
    after = answers[failed[-1] + 1 :] if failed else answers
    assert after
    assert all(status == 200 for status, _, _ in after)
