"""Faults under load, against the whole local stack: Triton killed and restarted, a gateway restarted behind
NGINX, bad model versions published. (PostgreSQL stopped for 30 s under traffic and the writer killed right
after its acks are in tests/feedback/test_writer_live.py.)"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

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
