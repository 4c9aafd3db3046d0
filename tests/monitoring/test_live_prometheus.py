"""Proof that the monitoring shows data: a real Prometheus scrapes the running stack (gateways, writer, Triton)
while traffic flows through NGINX; every dashboard panel's query and every recording rule is evaluated through
Prometheus's HTTP API and must return data (a panel that would show nothing fails the test)."""

from __future__ import annotations

import math
import threading
import time
import uuid
from typing import Any

import httpx
import pytest

from recsys.monitoring.queries import RATE_INTERVAL, panel_queries, recorded_names
from recsys.stack.local import LocalStack

pytestmark = pytest.mark.stack


class Traffic(threading.Thread):
    """Recommendations for listeners of both groups, with clicks and skips, until stopped."""

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
                n += 1
                self.stopping.wait(0.02)


def instant(stack: LocalStack, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{stack.prometheus_site.url}/api/v1/query", params={"query": expr}, timeout=10)
    assert response.status_code == 200, f"{expr}: {response.text}"
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def has_data(result: list[dict[str, Any]]) -> bool:
    return bool(result) and all(not math.isnan(float(r["value"][1])) for r in result)


def test_every_panel_and_recording_rule_returns_data(stack: LocalStack) -> None:
    assert stack.prometheus is not None
    traffic = Traffic(stack)
    traffic.start()
    try:
        deadline = time.monotonic() + 60
        while True:  # every target of every job scraped successfully
            targets = httpx.get(f"{stack.prometheus_site.url}/api/v1/targets").json()["data"]["activeTargets"]
            if targets and all(t["health"] == "up" for t in targets):
                break
            assert time.monotonic() < deadline, [(t["labels"]["job"], t["health"], t["lastError"]) for t in targets]
            time.sleep(0.2)
        assert {t["labels"]["job"] for t in targets} == {"gateway", "feedback", "triton"}

        pending = {q.key: q.rendered({RATE_INTERVAL: "30s"}) for q in panel_queries()}
        pending |= {f"rule {name}": name for name in recorded_names()}
        assert len(pending) > 20
        deadline = time.monotonic() + 90
        while pending:
            pending = {key: expr for key, expr in pending.items() if not has_data(instant(stack, expr))}
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        assert not pending, f"no data for: {sorted(pending)}"
    finally:
        traffic.stopping.set()
        traffic.join(10)
