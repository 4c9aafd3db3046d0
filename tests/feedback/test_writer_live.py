"""The feedback path against the real stack: gateway -> writer -> PostgreSQL, idempotency, flags, bad events,
and outages (PostgreSQL down for 30 s under traffic; the writer killed with SIGKILL right after its acks)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from tests_support import writer_auth

from recsys.stack.local import LocalStack
from recsys.v1 import recsys_pb2, recsys_pb2_grpc

pytestmark = pytest.mark.stack


def query(stack: LocalStack, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(stack.database_url)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def wait_until_drained(stack: LocalStack, timeout_s: float = 60.0) -> None:
    """Until the writer's spool is empty and its last write succeeded (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = httpx.get(stack.feedback_url + "/readyz", timeout=5).json()
        if state["spooled"] == 0 and state["database"]:
            return
        assert time.monotonic() < deadline, f"writer did not drain: {state}"
        time.sleep(0.05)


def recommend(stack: LocalStack, user: str) -> dict[str, Any]:
    response = httpx.post(stack.gateway_url + "/recommend", json={"user_id": user, "top_k": 5}, timeout=10)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def feedback(stack: LocalStack, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(stack.gateway_url + "/feedback", json=body, timeout=10)


def wait_for_row(stack: LocalStack, sql: str, *args: Any, timeout_s: float = 10.0) -> list[asyncpg.Record]:
    deadline = time.monotonic() + timeout_s
    while not (rows := query(stack, sql, *args)):
        assert time.monotonic() < deadline, f"no row for {sql} {args}"
        time.sleep(0.05)
    return rows


def test_impression_and_click_are_stored_once_even_when_retried(stack: LocalStack) -> None:
    served = recommend(stack, "11")
    click = {"user_id": "11", "group": served["group"], "request_id": served["request_id"],
             "clicked_item": served["recommended_items"][0]["item_id"],
             "skipped_items": [served["recommended_items"][1]["item_id"]], "inference_time_ms": 3.5}  # fmt: skip
    first, retry = feedback(stack, click), feedback(stack, click)
    assert first.status_code == retry.status_code == 202
    assert first.json()["event_id"] == retry.json()["event_id"]
    (impression,) = wait_for_row(stack, "SELECT * FROM impressions WHERE request_id = $1", served["request_id"])
    assert impression["user_id"] == "11"
    assert impression["ab_group"] == served["group"]
    assert impression["items"] == [i["item_id"] for i in served["recommended_items"]]
    assert impression["model"] == served["model"]
    wait_until_drained(stack)
    rows = query(stack, "SELECT * FROM feedback_checked WHERE request_id = $1", served["request_id"])
    assert len(rows) == 1
    assert (rows[0]["orphan"], rows[0]["click_not_shown"], rows[0]["mismatch"]) == (False, False, False)
    assert rows[0]["skipped_items"] == click["skipped_items"]
    # both kinds went through the batched COPY path (the one-by-one fallback counts nothing as written)
    metrics = httpx.get(stack.feedback_url + "/metrics").text
    for kind in ("impression", "feedback"):
        line = next(x for x in metrics.splitlines() if x.startswith(f'feedback_events_written_total{{kind="{kind}"}}'))
        assert float(line.split()[-1]) >= 1


def test_an_event_id_resent_with_other_content_gets_409_through_the_gateway(stack: LocalStack) -> None:
    """Regression (issue 14): the writer acknowledged such an event and silently dropped it."""
    served = recommend(stack, "14")
    items = [i["item_id"] for i in served["recommended_items"]]
    event_id = uuid.uuid4().hex
    body = {"user_id": "14", "group": served["group"], "request_id": served["request_id"], "clicked_item": items[0],
            "event_id": event_id}  # fmt: skip
    assert feedback(stack, body).status_code == 202
    assert feedback(stack, body | {"inference_time_ms": 7.0}).status_code == 202  # a retry: the same event
    conflict = feedback(stack, body | {"clicked_item": items[1]})
    assert conflict.status_code == 409, conflict.text
    assert conflict.json()["error"]["code"] == "event_conflict"
    assert event_id in conflict.json()["error"]["message"]
    wait_until_drained(stack)
    rows = query(stack, "SELECT clicked_item FROM feedback WHERE event_id = $1", event_id)
    assert [r["clicked_item"] for r in rows] == [items[0]]
    assert feedback(stack, body | {"skipped_items": [items[2]]}).status_code == 409  # found in the database now


def test_an_event_id_resent_with_other_content_is_already_exists_over_grpc(stack: LocalStack) -> None:
    event_id, ts = uuid.uuid4().hex, int(time.time() * 1000) - 1000
    play: dict[str, Any] = {"user_id": "15", "item_id": "1", "ts_ms": ts, "event_id": event_id}
    with grpc.insecure_channel(stack.gateway_grpc) as channel:
        stub = recsys_pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]
        stub.Plays(recsys_pb2.PlaysRequest(plays=[recsys_pb2.Play(**play)]), timeout=10)
        with pytest.raises(grpc.RpcError) as conflict:
            stub.Plays(recsys_pb2.PlaysRequest(plays=[recsys_pb2.Play(**play | {"item_id": "2"})]), timeout=10)
    assert conflict.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert event_id in (conflict.value.details() or "")


def test_feedback_that_does_not_match_what_was_served_is_stored_with_a_flag(stack: LocalStack) -> None:
    served = recommend(stack, "12")
    wrong_item = {"user_id": "12", "group": served["group"], "request_id": served["request_id"],
                  "clicked_item": "never-shown"}  # fmt: skip
    orphan = {"user_id": "12", "group": served["group"], "request_id": uuid.uuid4().hex, "clicked_item": "x"}
    assert feedback(stack, wrong_item).status_code == 202
    assert feedback(stack, orphan).status_code == 202
    wait_for_row(stack, "SELECT 1 FROM impressions WHERE request_id = $1", served["request_id"])
    wait_until_drained(stack)
    flags = {
        r["request_id"]: (r["orphan"], r["click_not_shown"])
        for r in query(stack, "SELECT * FROM feedback_checked WHERE user_id = '12'")
    }
    assert flags[served["request_id"]] == (False, True)
    assert flags[orphan["request_id"]] == (True, False)


@pytest.mark.parametrize(
    "body",
    [
        {"group": "A", "request_id": "r", "clicked_item": "i"},  # no user
        {"user_id": "1", "group": "Z", "request_id": "r", "clicked_item": "i"},  # unknown group
        {"user_id": "1", "group": "A", "request_id": "r"},  # neither click nor skips
        {"user_id": "1", "group": "A", "request_id": "r", "clicked_item": 5},  # wrong type
        {"user_id": "1", "group": "A", "request_id": "r", "skipped_items": "i"},  # not a list
        {"user_id": "1", "group": "A", "request_id": "r", "clicked_item": "i", "inference_time_ms": -1},
        {"user_id": "1", "group": "A", "request_id": "r", "skipped_items": ["ok", "n\x00ul"]},
    ],
)
def test_bad_feedback_gets_a_4xx_and_reaches_no_table(stack: LocalStack, body: dict[str, Any]) -> None:
    response = feedback(stack, body)
    assert 400 <= response.status_code < 500
    assert response.json()["error"]["message"]


def test_writer_refuses_malformed_events_itself(stack: LocalStack) -> None:
    bad = {"events": [{"kind": "feedback", "event_id": "e", "ts": 1.0, "request_id": "r", "user_id": "u"}]}
    auth = writer_auth(stack)
    response = httpx.post(stack.feedback_url + "/events", json=bad, headers=auth)
    assert response.status_code == 422
    assert "group" in response.json()["error"]["message"]
    assert httpx.post(stack.feedback_url + "/events", json={"events": []}, headers=auth).status_code == 422
    assert httpx.post(stack.feedback_url + "/events", content=b"not json", headers=auth).status_code == 422


def test_only_the_gateway_token_opens_the_writer_intake(stack: LocalStack) -> None:
    """Regression (issue 14): the intake took forged impressions and clicks from anyone."""
    forged = {"kind": "impression", "request_id": uuid.uuid4().hex, "ts": time.time(), "user_id": "13", "group": "A",
              "model": "m", "model_version": 1, "items": ["1"], "latency_ms": 1.0, "fallback": False}  # fmt: skip
    response = httpx.post(stack.feedback_url + "/events", json={"events": [forged]})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    served = recommend(stack, "13")  # the gateway's own impression still goes through, with the token
    wait_for_row(stack, "SELECT 1 FROM impressions WHERE request_id = $1", served["request_id"])
    assert query(stack, "SELECT 1 FROM impressions WHERE request_id = $1", forged["request_id"]) == []


def test_sql_looking_text_is_stored_verbatim(stack: LocalStack) -> None:
    nasty = "x'); DROP TABLE feedback; --"
    served = recommend(stack, nasty)  # an unknown listener: the fallback answers
    ack = feedback(stack, {"user_id": nasty, "group": served["group"], "request_id": served["request_id"],
                           "clicked_item": nasty, "skipped_items": ["'; SELECT pg_sleep(10); --"]})  # fmt: skip
    assert ack.status_code == 202
    wait_until_drained(stack)
    (row,) = wait_for_row(stack, "SELECT * FROM feedback WHERE event_id = $1", ack.json()["event_id"])
    assert row["user_id"] == row["clicked_item"] == nasty
    assert query(stack, "SELECT count(*) AS n FROM feedback")[0]["n"] >= 1


class Traffic:
    """Steady feedback through the gateway from a thread; remembers every acknowledged event id."""

    def __init__(self, stack: LocalStack, rate_per_s: float = 40.0) -> None:
        self.stack, self.interval = stack, 1.0 / rate_per_s
        self.acked: list[str] = []
        self.refused: list[str] = []  # status and body of every answer but 202
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.stack.gateway_url, timeout=10) as client:
            while not self._stop.is_set():
                event_id = uuid.uuid4().hex
                body = {"user_id": "21", "group": self.stack.experiment.assign("21"), "request_id": "traffic",
                        "clicked_item": "1", "event_id": event_id}  # fmt: skip
                answer = client.post("/feedback", json=body)
                if answer.status_code == 202:
                    self.acked.append(event_id)
                else:
                    self.refused.append(f"{answer.status_code} {answer.text}")
                self._stop.wait(self.interval)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def stored_counts(stack: LocalStack, ids: list[str]) -> dict[str, int]:
    rows = query(stack, "SELECT event_id, count(*) AS n FROM feedback WHERE event_id = ANY($1) GROUP BY 1", ids)
    return {r["event_id"]: r["n"] for r in rows}


def test_postgres_down_for_30_s_under_traffic_loses_no_acknowledged_event(stack: LocalStack) -> None:
    with Traffic(stack) as traffic:
        time.sleep(1.0)  # traffic before the outage
        stack.postgres.stop()
        try:
            outage_end = time.monotonic() + 30.0
            acked_before = len(traffic.acked)
            while time.monotonic() < outage_end:  # the outage itself: 30 s of traffic against a stopped database
                time.sleep(0.5)
            assert len(traffic.acked) > acked_before + 500  # events kept being accepted (into the spool)
            assert httpx.get(stack.feedback_url + "/readyz").json()["database"] is False
        finally:
            stack.postgres.start()
        time.sleep(1.0)  # traffic after the outage
    wait_until_drained(stack)
    counts = stored_counts(stack, traffic.acked)
    assert traffic.refused == []
    assert len(counts) == len(traffic.acked)
    assert set(counts.values()) == {1}


def test_writer_killed_right_after_acks_loses_nothing_on_restart(stack: LocalStack) -> None:
    with httpx.Client(base_url=stack.gateway_url, timeout=10) as client:
        ids = []
        for _ in range(300):
            event_id = uuid.uuid4().hex
            body = {"user_id": "22", "group": stack.experiment.assign("22"), "request_id": "kill",
                    "skipped_items": ["1", "2"], "event_id": event_id}  # fmt: skip
            assert client.post("/feedback", json=body).status_code == 202
            ids.append(event_id)
    stack.writer.kill()  # SIGKILL at once: most acknowledged events are only in the spool
    stack.writer.start()
    wait_until_drained(stack)
    counts = stored_counts(stack, ids)
    assert len(counts) == len(ids)
    assert set(counts.values()) == {1}
