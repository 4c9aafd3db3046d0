"""Organic plays against the real stack (NGINX, gateways, writer, PostgreSQL): ``POST /plays`` and gRPC ``Plays``
are acknowledged only once on the writer's disk and stored exactly once under retries (the same play resent, a
whole batch resent, over either transport), bad input gets a 4xx naming the problem and reaches no table, and a
writer that is down answers 503 with Retry-After (UNAVAILABLE over gRPC) until it is back."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from tests_support import query, writer_auth

from recsys.core.limits import MAX_ID_CHARS, MAX_PLAYS_PER_REQUEST, PLAY_MAX_FUTURE_MS, PLAYS_MAX_BODY_BYTES
from recsys.stack.local import LocalStack
from recsys.v1 import recsys_pb2, recsys_pb2_grpc

pytestmark = pytest.mark.stack

Y2K_MS = 946_684_800_000


def now_ms() -> int:
    return int(time.time() * 1000)


def stored(stack: LocalStack, event_ids: list[str]) -> dict[str, list[asyncpg.Record]]:
    rows = query(stack.database_url, "SELECT * FROM plays WHERE event_id = ANY($1)", event_ids)
    by_id: dict[str, list[asyncpg.Record]] = {}
    for row in rows:
        by_id.setdefault(row["event_id"], []).append(row)
    return by_id


def plays(stack: LocalStack, body: Any, url: str | None = None) -> httpx.Response:
    return httpx.post((url or stack.gateway_url) + "/plays", json=body, timeout=10)


def metric(text: str, prefix: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def test_a_play_and_a_batch_are_acknowledged_and_stored_once_under_retries(stack: LocalStack) -> None:
    user, t = f"player-{uuid.uuid4().hex[:8]}", now_ms()
    one = {"user_id": user, "item_id": "7", "ts_ms": t, "ms_played": 185_000}
    batch = {"plays": [
        {"user_id": user, "item_id": "8", "ts_ms": t + 1},
        {"user_id": user, "item_id": "9", "ts_ms": t + 2, "ms_played": 0, "event_id": f"client-{uuid.uuid4().hex}"},
        {"user_id": user, "item_id": "7", "ts_ms": t - 60_000, "ms_played": 30_000},
    ]}  # fmt: skip
    counted_before = metric(httpx.get(stack.gateway_url + "/metrics").text, "organic_plays_total")

    first, retry = plays(stack, one), plays(stack, one)
    assert first.status_code == retry.status_code == 202, first.text
    assert first.json() == retry.json() == {"accepted": 1, "event_ids": first.json()["event_ids"], "status": "accepted"}
    sent, resent = plays(stack, batch), plays(stack, batch)
    assert sent.status_code == resent.status_code == 202, sent.text
    assert sent.json()["accepted"] == 3
    ids = sent.json()["event_ids"]
    assert resent.json()["event_ids"] == ids
    assert ids[1] == batch["plays"][1]["event_id"]  # a client's key is kept as sent
    assert len({*ids, *first.json()["event_ids"]}) == 4

    stack.wait_drained()
    rows = stored(stack, [*first.json()["event_ids"], *ids])
    assert {k: len(v) for k, v in rows.items()} == dict.fromkeys([*first.json()["event_ids"], *ids], 1)
    (row,) = rows[first.json()["event_ids"][0]]
    assert (row["user_id"], row["item_id"], row["ms_played"]) == (user, "7", 185_000)
    assert row["ts"] == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=t)  # exact to the millisecond
    assert rows[ids[0]][0]["ms_played"] is None  # unknown, not zero
    assert rows[ids[1]][0]["ms_played"] == 0
    assert len(query(stack.database_url, "SELECT 1 FROM plays WHERE user_id = $1", user)) == 4

    counted = metric(httpx.get(stack.gateway_url + "/metrics").text, "organic_plays_total")
    assert counted - counted_before == 1 + 1 + 3 + 3  # acknowledged plays (retries included) on this gateway
    # through NGINX (either gateway: its retry of a refused connection may land on the other) the key is the same
    assert plays(stack, one, stack.nginx_url).json()["event_ids"] == first.json()["event_ids"]
    written = httpx.get(stack.feedback_url + "/metrics").text
    assert metric(written, 'feedback_events_written_total{kind="play"}') >= 4


def test_grpc_plays_are_stored_once_under_retries_with_the_keys_rest_derives(stack: LocalStack) -> None:
    user, t = f"grpc-player-{uuid.uuid4().hex[:8]}", now_ms()
    request = recsys_pb2.PlaysRequest(
        plays=[
            recsys_pb2.Play(user_id=user, item_id="11", ts_ms=t, ms_played=1_000),
            recsys_pb2.Play(user_id=user, item_id="12", ts_ms=t + 5),
        ]
    )
    with grpc.insecure_channel(stack.gateway_grpc) as channel:
        stub = recsys_pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]
        first = stub.Plays(request, timeout=10)
        retry = stub.Plays(request, timeout=10)
    assert first.accepted == retry.accepted == 2
    assert list(first.event_ids) == list(retry.event_ids)
    rest = plays(stack, {"plays": [{"user_id": user, "item_id": "11", "ts_ms": t, "ms_played": 1_000},
                                   {"user_id": user, "item_id": "12", "ts_ms": t + 5}]})  # fmt: skip
    assert rest.json()["event_ids"] == list(first.event_ids)  # one service layer, one derivation
    stack.wait_drained()
    rows = stored(stack, list(first.event_ids))
    assert {k: len(v) for k, v in rows.items()} == dict.fromkeys(first.event_ids, 1)
    assert rows[first.event_ids[0]][0]["ms_played"] == 1_000
    assert rows[first.event_ids[1]][0]["ms_played"] is None  # proto3 presence: unset is unknown


def _bad_bodies() -> list[Any]:
    t = now_ms()
    ok = {"user_id": "bad-plays", "item_id": "1", "ts_ms": t}
    cases = [
        ("unknown field", {**ok, "duration": 3}, 422, "duration"),
        ("unknown field in a batch", {"plays": [{**ok, "skipped": True}]}, 422, "skipped"),
        ("unknown top-level field of a batch", {"plays": [ok], "user": "x"}, 422, "user"),
        ("ts far future", {**ok, "ts_ms": t + 24 * 3600 * 1000}, 400, "ts_ms"),
        ("ts in microseconds", {**ok, "ts_ms": t * 1000}, 400, "ts_ms"),
        ("ts in 1999", {**ok, "ts_ms": Y2K_MS - 24 * 3600 * 1000}, 422, "ts_ms"),
        ("ts in seconds", {**ok, "ts_ms": t // 1000}, 422, "ts_ms"),
        ("ts not an integer", {**ok, "ts_ms": "2026-12-04T18:00:00Z"}, 422, "ts_ms"),
        ("ts missing", {"user_id": "bad-plays", "item_id": "1"}, 422, "ts_ms"),
        ("oversize batch", {"plays": [ok] * (MAX_PLAYS_PER_REQUEST + 1)}, 422, "at most 100"),
        ("empty batch", {"plays": []}, 422, "plays"),
        ("negative ms_played", {**ok, "ms_played": -1}, 422, "ms_played"),
        ("ms_played over a day", {**ok, "ms_played": 24 * 3600 * 1000 + 1}, 422, "ms_played"),
        ("empty user_id", {**ok, "user_id": ""}, 422, "user_id"),
        ("empty item_id", {**ok, "item_id": ""}, 422, "item_id"),
        ("empty event_id", {**ok, "event_id": ""}, 422, "event_id"),
        ("item_id too long", {**ok, "item_id": "x" * (MAX_ID_CHARS + 1)}, 422, "item_id"),
        ("NUL in item_id", {**ok, "item_id": "a\x00b"}, 422, "item_id"),
        ("not an object", [ok], 422, "valid dictionary"),
    ]
    return [pytest.param(*case[1:], id=case[0]) for case in cases]


@pytest.mark.parametrize(("body", "status", "fragment"), _bad_bodies())
def test_bad_plays_get_a_4xx_naming_the_problem_and_reach_no_table(
    stack: LocalStack, body: Any, status: int, fragment: str
) -> None:
    response = plays(stack, body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == ("invalid_argument" if status == 400 else "invalid_request")
    assert fragment in response.json()["error"]["message"]
    stack.wait_drained()
    assert query(stack.database_url, "SELECT 1 FROM plays WHERE user_id = 'bad-plays'") == []


def test_the_time_window_is_now_plus_the_skew(stack: LocalStack) -> None:
    user = f"skew-{uuid.uuid4().hex[:8]}"
    inside = plays(stack, {"user_id": user, "item_id": "1", "ts_ms": now_ms() + PLAY_MAX_FUTURE_MS - 10_000})
    outside = plays(stack, {"user_id": user, "item_id": "1", "ts_ms": now_ms() + PLAY_MAX_FUTURE_MS + 10_000})
    y2k = plays(stack, {"user_id": user, "item_id": "2", "ts_ms": Y2K_MS})
    assert (inside.status_code, outside.status_code, y2k.status_code) == (202, 400, 202), outside.text
    assert "5 minutes" in outside.json()["error"]["message"]


@pytest.mark.parametrize(
    ("play", "fragment"),
    [
        ({"ts_ms": 0}, "ts_ms"),  # unset: 1970
        ({"ts_ms": Y2K_MS - 1}, "ts_ms"),
        ({"ts_ms": 10**15}, "ts_ms"),
        ({"ms_played": -5}, "ms_played"),
        ({"user_id": ""}, "user_id"),
        ({"item_id": ""}, "item_id"),
        ({"item_id": "a\x00b"}, "NUL"),
    ],
)
def test_bad_grpc_plays_are_invalid_argument(stack: LocalStack, play: dict[str, Any], fragment: str) -> None:
    fields: dict[str, Any] = {"user_id": "bad-plays", "item_id": "1", "ts_ms": now_ms(), **play}
    with grpc.insecure_channel(stack.gateway_grpc) as channel:
        stub = recsys_pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as bad:
            stub.Plays(recsys_pb2.PlaysRequest(plays=[recsys_pb2.Play(**fields)]), timeout=10)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (bad.value.details() or "")


def test_grpc_batch_size_is_bounded(stack: LocalStack) -> None:
    play = recsys_pb2.Play(user_id="bad-plays", item_id="1", ts_ms=now_ms())
    with grpc.insecure_channel(stack.gateway_grpc) as channel:
        stub = recsys_pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]
        for batch in ([], [play] * (MAX_PLAYS_PER_REQUEST + 1)):
            with pytest.raises(grpc.RpcError) as bad:
                stub.Plays(recsys_pb2.PlaysRequest(plays=batch), timeout=10)
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "1 to 100 plays" in (bad.value.details() or "")


def test_a_full_batch_of_longest_ids_fits_the_body_cap_through_nginx(stack: LocalStack) -> None:
    """The limits agree: 100 plays with every id at its longest pass NGINX and the gateway (over 16 KiB, the cap of
    the other routes), while a body over the /plays cap is refused by both."""
    t, tag = now_ms(), uuid.uuid4().hex
    full = {"plays": [
        {"user_id": f"{tag}-{n:03d}".ljust(MAX_ID_CHARS, "u"), "item_id": "i" * MAX_ID_CHARS, "ts_ms": t,
         "ms_played": 86_400_000, "event_id": f"{tag}-{n:03d}".ljust(MAX_ID_CHARS, "e")}
        for n in range(MAX_PLAYS_PER_REQUEST)
    ]}  # fmt: skip
    content = httpx.Request("POST", "/", json=full).content
    assert 16 * 1024 < len(content) < PLAYS_MAX_BODY_BYTES
    via_nginx = plays(stack, full, stack.nginx_url)
    assert via_nginx.status_code == 202, via_nginx.text
    assert via_nginx.json()["accepted"] == MAX_PLAYS_PER_REQUEST
    oversized = {"plays": [{**p, "pad": "x" * 2000} for p in full["plays"]]}
    for url in (stack.nginx_url, stack.gateway_url):
        too_large = plays(stack, oversized, url)
        assert too_large.status_code == 413
        assert too_large.json()["error"]["code"] == "body_too_large"
    # the other routes keep their 16 KiB cap
    assert httpx.post(stack.gateway_url + "/feedback", json={"pad": "x" * 20_000}).status_code == 413
    stack.wait_drained()
    assert len(stored(stack, via_nginx.json()["event_ids"])) == MAX_PLAYS_PER_REQUEST


def test_writer_down_gives_503_then_the_retry_is_stored_once(stack: LocalStack) -> None:
    user = f"outage-{uuid.uuid4().hex[:8]}"
    batch = {"plays": [{"user_id": user, "item_id": str(n), "ts_ms": now_ms()} for n in range(3)]}
    grpc_request = recsys_pb2.PlaysRequest(plays=[recsys_pb2.Play(user_id=user, item_id="99", ts_ms=now_ms())])
    stack.writer.stop()
    try:
        start = time.monotonic()
        down = plays(stack, batch)
        assert time.monotonic() - start < 3.0  # the writer's deadline (2 s), never longer
        assert down.status_code == 503, down.text
        assert down.headers["retry-after"] == "1"
        assert down.json()["error"]["code"] == "unavailable"
        with grpc.insecure_channel(stack.gateway_grpc) as channel:
            stub = recsys_pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.RpcError) as unavailable:
                stub.Plays(grpc_request, timeout=10)
        assert unavailable.value.code() == grpc.StatusCode.UNAVAILABLE
        trailers = unavailable.value.trailing_metadata() or ()
        assert any(m.key == "retry-after" and m.value in ("1", b"1") for m in trailers)
    finally:
        stack.writer.start()
    retried = plays(stack, batch)  # the client's retry once the writer is back
    assert retried.status_code == 202, retried.text
    with grpc.insecure_channel(stack.gateway_grpc) as channel:
        stub = recsys_pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]
        grpc_ids = list(stub.Plays(grpc_request, timeout=10).event_ids)
    stack.wait_drained()
    ids = [*retried.json()["event_ids"], *grpc_ids]
    assert {k: len(v) for k, v in stored(stack, ids).items()} == dict.fromkeys(ids, 1)
    assert len(query(stack.database_url, "SELECT 1 FROM plays WHERE user_id = $1", user)) == 4


def test_writer_refuses_bad_play_events_itself(stack: LocalStack) -> None:
    """The writer trusts no caller: what the gateway refuses, its intake refuses too (nothing is spooled)."""
    event_id = uuid.uuid4().hex
    good: dict[str, Any] = {"kind": "play", "event_id": event_id, "ts_ms": now_ms(), "user_id": "w", "item_id": "1"}
    for bad, fragment in (
        ({**good, "item_id": "a\x00b"}, "item_id"),
        ({**good, "user_id": "\x00"}, "user_id"),
        ({**good, "ts_ms": Y2K_MS - 1}, "ts_ms"),
        ({**good, "ts_ms": now_ms() + 3_600_000}, "future"),
        ({**good, "ms_played": -1}, "ms_played"),
        ({**good, "extra": 1}, "extra"),
        ({k: v for k, v in good.items() if k != "event_id"}, "event_id"),
    ):
        response = httpx.post(stack.feedback_url + "/events", json={"events": [bad]}, headers=writer_auth(stack))
        assert response.status_code == 422, (bad, response.text)
        assert fragment in response.json()["error"]["message"]
    assert (
        httpx.post(stack.feedback_url + "/events", json={"events": [good]}, headers=writer_auth(stack)).status_code
        == 202
    )
    stack.wait_drained()
    assert len(stored(stack, [event_id])[event_id]) == 1
