"""The live fold-in takes only clean clicks, by the A/B report's own definition (``feedback_checked.clean``; issue 14:
clicks on a request that was never served moved the listener's live vector although the report flagged them).

Against a real PostgreSQL: the poller itself, with each flag; and the whole stack: a forged click through the
gateway leaves its listener on the fallback while a real one, sent after it, is folded in."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from tests_support import on_database

from recsys.stack.local import LocalStack
from serving.poller import FeedbackPoller

pytestmark = pytest.mark.stack


class Folded:
    """What the poller hands to the fold-in, for one test's listeners."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.pairs: list[tuple[str, int]] = []

    def __call__(self, plays: list[tuple[str, int]]) -> None:
        self.pairs += [p for p in plays if p[0].startswith(self.prefix)]

    def users(self) -> set[str]:
        return {u for u, _ in self.pairs}


@pytest.fixture
def poller(log_database: str) -> Iterator[tuple[FeedbackPoller, Folded, str]]:
    prefix = f"clean-{uuid.uuid4().hex[:8]}-"
    folded = Folded(prefix)
    items = {f"{prefix}item-{n}": n for n in range(5)}
    p = FeedbackPoller(log_database, items, folded, interval_s=0.05, orphan_grace_s=1.5)
    p.start()
    try:
        yield p, folded, prefix
    finally:
        p.stop()


def impression(url: str, request_id: str, user: str, items: list[str], group: str = "A") -> None:
    async def insert(conn: asyncpg.Connection) -> None:
        await conn.execute(
            "INSERT INTO impressions (request_id, ts, user_id, ab_group, model, model_version, items, latency_ms,"
            " fallback) VALUES ($1, now(), $2, $3, 'm', 1, $4, 1, false)",
            request_id, user, group, items,
        )  # fmt: skip

    on_database(url, insert)


def click(url: str, request_id: str, user: str, item: str, group: str = "A") -> int:
    async def insert(conn: asyncpg.Connection) -> int:
        seq: int = await conn.fetchval(
            "INSERT INTO feedback (event_id, ts, request_id, user_id, ab_group, clicked_item) "
            "VALUES ($1, now(), $2, $3, $4, $5) RETURNING seq",
            uuid.uuid4().hex, request_id, user, group, item,
        )  # fmt: skip
        return seq

    seq: int = on_database(url, insert)
    return seq


def wait_for(condition: Any, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_the_poller_folds_in_clean_clicks_only(log_database: str, poller: Any) -> None:
    p, folded, prefix = poller
    item = [f"{prefix}item-{n}" for n in range(5)]
    impression(log_database, f"{prefix}r1", f"{prefix}served", item[:3])
    click(log_database, f"{prefix}r1", f"{prefix}not-shown", item[4])  # another listener on r1: mismatch too
    click(log_database, f"{prefix}r1", f"{prefix}served", item[4])  # not shown
    click(log_database, f"{prefix}r1", f"{prefix}served", item[0], group="B")  # group disagrees
    forged = click(log_database, f"{prefix}never-served", f"{prefix}forger", item[1])  # orphan: never served
    late = click(log_database, f"{prefix}r2", f"{prefix}late", item[2])  # orphan until its impression comes
    click(log_database, f"{prefix}r1", f"{prefix}served", item[1])  # clean: the barrier
    wait_for(lambda: f"{prefix}served" in folded.users(), "the clean click was never folded in")
    assert folded.pairs == [(f"{prefix}served", 1)]
    assert late in p.waiting  # the click whose impression is on its way waits, re-checked at every poll

    impression(log_database, f"{prefix}r2", f"{prefix}late", item[2:4])
    wait_for(lambda: f"{prefix}late" in folded.users(), "the late impression's click was never folded in")
    wait_for(lambda: forged not in p.waiting, "the forged click still waits past its grace", timeout_s=5)
    assert sorted(folded.pairs) == [(f"{prefix}late", 2), (f"{prefix}served", 1)]
    assert f"{prefix}forger" not in folded.users()


def recommend(stack: LocalStack, user: str, k: int = 10) -> dict[str, Any]:
    response = httpx.post(stack.gateway_url + "/recommend", json={"user_id": user, "top_k": k}, timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_forged_click_through_the_gateway_moves_no_live_vector(stack: LocalStack) -> None:
    forger, listener = f"forger-{uuid.uuid4().hex[:8]}", f"listener-{uuid.uuid4().hex[:8]}"
    shown = recommend(stack, forger, 20)
    assert shown["fallback"] is True
    items = [i["item_id"] for i in shown["recommended_items"]]
    for item in items[:3]:  # a request id that no response ever carried
        forged = {"user_id": forger, "group": shown["group"], "request_id": uuid.uuid4().hex, "clicked_item": item}
        assert httpx.post(stack.gateway_url + "/feedback", json=forged, timeout=10).status_code == 202
    since = datetime.now(UTC)
    served = recommend(stack, listener, 20)  # sent after the forged clicks: folded in after them, in seq order
    for item in [i["item_id"] for i in served["recommended_items"]][:3]:
        real = {"user_id": listener, "group": served["group"], "request_id": served["request_id"], "clicked_item": item}
        assert httpx.post(stack.gateway_url + "/feedback", json=real, timeout=10).status_code == 202
    wait_for(lambda: recommend(stack, listener)["fallback"] is False, "the real listener was never folded in", 15)
    print(f"real clicks folded in {(datetime.now(UTC) - since).total_seconds():.2f} s after the recommendation")
    assert recommend(stack, forger)["fallback"] is True
