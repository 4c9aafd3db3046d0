"""Proof that the monitoring shows data: a real Prometheus scrapes the running stack (gateways, writer, Triton) and
the real training loop (``recsys retrain --items-only --metrics-port``, cycling on the stack's repository, database
and Triton) while recommendations, feedback and organic plays flow through NGINX; every dashboard panel's query and
every recording rule is evaluated through Prometheus's HTTP API and must return data (a panel that would show
nothing fails the test).

The stack's own Prometheus (started by the session fixture) has no loop target, so this test runs one of its own
(the same ``LocalPrometheus``, the same rendered config) with the stack's targets and the loop's."""

from __future__ import annotations

import math
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from recsys.monitoring.queries import RATE_INTERVAL, panel_queries, recorded_names
from recsys.stack.local import LocalStack
from recsys.stack.ports import free_port
from recsys.stack.process import ServiceProcess
from recsys.stack.prometheus import LocalPrometheus

pytestmark = pytest.mark.stack


class Traffic(threading.Thread):
    """Recommendations for listeners of both groups, with clicks and skips, and organic plays of recommended (known)
    items by listeners of this test's own, until stopped. Known items only: the loop's items cycles must not
    publish a new version into the session's stack."""

    def __init__(self, stack: LocalStack) -> None:
        super().__init__(daemon=True)
        self.stack, self.stopping = stack, threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.stack.nginx_url, timeout=10) as client:
            n = 0
            while not self.stopping.is_set():
                user = str(1 + n % 200)
                body = client.post("/recommend", json={"user_id": user}, headers={"X-User-Id": user}).json()
                items = [i["item_id"] for i in body["recommended_items"]]
                client.post("/feedback", json={
                    "user_id": user, "group": body["group"], "request_id": body["request_id"],
                    "clicked_item": items[0] if n % 3 else None, "skipped_items": items[1:3],
                    "event_id": uuid.uuid4().hex,
                })  # fmt: skip
                if n % 10 == 0:
                    play = {
                        "user_id": f"monitoring-listener-{n % 7}",
                        "item_id": items[0],
                        "ts_ms": int(time.time() * 1000),
                    }
                    client.post("/plays", json=play)
                n += 1
                self.stopping.wait(0.02)


@pytest.fixture
def loop(stack: LocalStack, tmp_path: Path) -> Iterator[str]:
    """The training loop on the stack: new-items cycles every 2 s, metrics on a free port; stopped (SIGTERM) after."""
    port = free_port()
    process = ServiceProcess(
        name="loop",
        command=[
            sys.executable, "-m", "recsys", "retrain", "--items-only", "--every", "2s", "--metrics-port", str(port),
            "--repository", str(stack.config.model_repository),
            "--triton-http", f"127.0.0.1:{stack.config.ports.triton_http}",
        ],
        ready_url=f"http://127.0.0.1:{port}/metrics",
        log_path=tmp_path / "loop.log",
        env=stack.env() | {"RECSYS_LOOP_DIR": str(tmp_path / "runs")},  # RECSYS_DATABASE_URL: the stack's
    )  # fmt: skip
    with process.start(timeout_s=60):
        yield f"127.0.0.1:{port}"
    assert process.returncode == 0, process.log_tail()


@pytest.fixture
def prometheus(stack: LocalStack, loop: str, tmp_path: Path) -> Iterator[str]:
    """A Prometheus of this test's own: the stack's targets and the loop's, every second; its URL."""
    site = LocalPrometheus(
        workdir=tmp_path / "prometheus",
        port=free_port(),
        targets=stack.prometheus_site.targets | {"loop": [loop]},
        scrape_interval="1s",
    )
    with site.process().start(timeout_s=60):
        yield site.url


def instant(url: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
    assert response.status_code == 200, f"{expr}: {response.text}"
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def has_data(result: list[dict[str, Any]]) -> bool:
    return bool(result) and all(not math.isnan(float(r["value"][1])) for r in result)


def test_every_panel_and_recording_rule_returns_data(stack: LocalStack, prometheus: str) -> None:
    traffic = Traffic(stack)
    traffic.start()
    try:
        deadline = time.monotonic() + 60
        while True:  # every target of every job scraped successfully
            targets = httpx.get(f"{prometheus}/api/v1/targets").json()["data"]["activeTargets"]
            if targets and all(t["health"] == "up" for t in targets):
                break
            assert time.monotonic() < deadline, [(t["labels"]["job"], t["health"], t["lastError"]) for t in targets]
            time.sleep(0.2)
        assert {t["labels"]["job"] for t in targets} == {"gateway", "feedback", "triton", "loop"}

        pending = {q.key: q.rendered({RATE_INTERVAL: "30s"}) for q in panel_queries()}
        pending |= {f"rule {name}": name for name in recorded_names()}
        assert len(pending) > 20
        # Not only present: the loop has cycled (and judged nothing new), the plays were counted and stored.
        pending |= {
            "loop cycled": 'sum(recsys_loop_cycles_total{kind="items", decision="unchanged"}) >= 2',
            "loop cycles ok": 'min(recsys_loop_last_cycle_ok{kind="items"}) == 1',
            "served model has an age": "recsys_model_age_seconds > 0",
            "plays acknowledged": "sum(organic_plays_total) > 0",
            "plays written": 'sum(feedback_events_written_total{kind="play"}) > 0',
        }
        deadline = time.monotonic() + 90
        while pending:
            pending = {key: expr for key, expr in pending.items() if not has_data(instant(prometheus, expr))}
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        assert not pending, f"no data for: {sorted(pending)}"
    finally:
        traffic.stopping.set()
        traffic.join(10)
