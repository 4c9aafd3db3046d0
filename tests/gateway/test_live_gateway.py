"""The gateway against the real stack (Triton, writer, PostgreSQL): REST and gRPC answers, errors, metrics."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest

from recsys.core.triton_client import TritonRecommender
from recsys.stack.local import LocalStack
from recsys.v1 import recsys_pb2, recsys_pb2_grpc

pytestmark = pytest.mark.stack


def post(stack: LocalStack, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(stack.gateway_url + path, json=body, timeout=10, **kwargs)


def test_rest_answer_is_tritons_answer_for_the_users_group(stack: LocalStack) -> None:
    triton = TritonRecommender(f"127.0.0.1:{stack.config.ports.triton_grpc}", api_key=stack.triton_key)
    try:
        for user in ("1", "2", "17", "42", "299"):
            response = post(stack, "/recommend", {"user_id": user, "top_k": 7})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["group"] == stack.experiment.assign(user)
            assert body["model"] == stack.experiment.model_of(body["group"])
            (direct,) = triton.recommend(body["model"], [user], top_k=7)
            assert [i["item_id"] for i in body["recommended_items"]] == direct.item_ids
            assert body["model_version"] == str(direct.model_version)
            assert body["fallback"] is False
            assert len(body["request_id"]) == 32
            assert 0 < body["inference_time_ms"] < 1000
    finally:
        triton.close()


def test_integer_user_id_and_default_top_k(stack: LocalStack) -> None:
    body = post(stack, "/recommend", {"user_id": 1}).json()
    assert len(body["recommended_items"]) == 10
    assert body["group"] == stack.experiment.assign("1")


def test_unknown_listener_gets_the_flagged_fallback(stack: LocalStack) -> None:
    body = post(stack, "/recommend", {"user_id": "nobody-knows-me", "top_k": 5}).json()
    assert body["fallback"] is True
    assert len(body["recommended_items"]) == 5


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"user_id": "1", "top_k": 0}, 422, "top_k"),
        ({"user_id": "1", "top_k": -3}, 422, "top_k"),
        ({"user_id": "1", "top_k": 1001}, 400, "between 1 and 1000"),
        ({"user_id": "1", "top_k": "ten"}, 422, "top_k"),
        ({"user_id": True}, 422, "user_id"),
        ({"user_id": ""}, 422, "user_id"),
        ({"user_id": "x" * 300}, 422, "user_id"),
        ({"user_id": "a\x00b"}, 422, "user_id"),  # PostgreSQL text cannot hold NUL: refused at the edge
        ({"top_k": 3}, 422, "user_id"),
        ({"user_id": "1", "extra": 1}, 422, "extra"),
        ([1, 2], 422, "body"),
    ],
)
def test_bad_recommend_bodies_get_a_4xx_with_a_message(
    stack: LocalStack, body: Any, status: int, fragment: str
) -> None:
    response = post(stack, "/recommend", body)
    assert response.status_code == status
    assert fragment in response.json()["error"]["message"]


def test_malformed_json_non_json_and_oversized_bodies(stack: LocalStack) -> None:
    url = stack.gateway_url + "/recommend"
    broken = httpx.post(url, content=b'{"user_id": ', headers={"content-type": "application/json"})
    assert broken.status_code == 422
    assert "JSON" in broken.json()["error"]["message"]
    form = httpx.post(url, content=b"user_id=1", headers={"content-type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415
    huge = httpx.post(url, content=b"{" + b" " * 20000 + b"}", headers={"content-type": "application/json"})
    assert huge.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap counts what arrives
        yield b'{"user_id": "1", "pad": "'
        yield from (b"x" * 4096 for _ in range(6))
        yield b'"}'

    chunked = httpx.post(url, content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    assert chunked.json()["error"]["code"] == "body_too_large"
    blank = httpx.post(url, json={"user_id": "   "})
    assert blank.status_code == 400


def test_group_header_unknown_is_refused_and_a_disagreeing_one_is_counted_and_overridden(stack: LocalStack) -> None:
    unknown = post(stack, "/recommend", {"user_id": "5"}, headers={"X-AB-Group": "Z"})
    assert unknown.status_code == 400
    assert "unknown group" in unknown.json()["error"]["message"]

    right = stack.experiment.assign("5")
    wrong = next(g for g in stack.experiment.group_names if g != right)
    before = _metric(stack, "ab_group_mismatch_total")
    spoofed = post(stack, "/recommend", {"user_id": "5"}, headers={"X-AB-Group": wrong})
    assert spoofed.status_code == 200
    assert spoofed.json()["group"] == right
    assert _metric(stack, "ab_group_mismatch_total") == before + 1


def test_user_id_header_that_differs_from_the_body_is_refused(stack: LocalStack) -> None:
    response = post(stack, "/recommend", {"user_id": "5"}, headers={"X-User-Id": "6"})
    assert response.status_code == 400


def _metric(stack: LocalStack, name: str, labels: str = "") -> float:
    text = httpx.get(stack.gateway_url + "/metrics").text
    for line in text.splitlines():
        if line.startswith(name + (labels and "{")) and (not labels or labels in line):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_latency_requests_and_impressions_by_group(stack: LocalStack) -> None:
    group = stack.experiment.assign("3")
    model = stack.experiment.model_of(group)
    before = _metric(stack, "recommendation_impressions_total", f'group="{group}"')
    post(stack, "/recommend", {"user_id": "3"})
    text = httpx.get(stack.gateway_url + "/metrics").text
    assert f'inference_latency_ms_count{{group="{group}",model="{model}"}}' in text
    assert 'gateway_requests_total{method="POST",route="/recommend",status="200"}' in text
    assert "process_resident_memory_bytes" in text
    assert _metric(stack, "recommendation_impressions_total", f'group="{group}"') == before + 1


def test_health_readiness_and_openapi(stack: LocalStack) -> None:
    assert httpx.get(stack.gateway_url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(stack.gateway_url + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["models"] == dict.fromkeys(stack.experiment.models, True)
    spec = httpx.get(stack.gateway_url + "/openapi.json").json()
    assert {"/recommend", "/feedback", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    recommend = spec["paths"]["/recommend"]["post"]
    assert {"200", "400", "413", "422", "503"} <= set(recommend["responses"])
    assert set(spec["components"]["schemas"]["RecommendResponse"]["properties"]) == {
        "recommended_items", "group", "model", "model_version", "request_id", "inference_time_ms", "fallback",
        "score_kind",
    }  # fmt: skip
    headers = {p["name"] for p in recommend["parameters"] if p["in"] == "header"}
    assert {"X-User-Id", "X-AB-Group", "X-Request-Id"} <= headers


def test_score_kind_tells_model_scores_from_the_fallbacks_play_counts(stack: LocalStack) -> None:
    known = post(stack, "/recommend", {"user_id": "1", "top_k": 3}).json()
    unknown = post(stack, "/recommend", {"user_id": "nobody-at-all", "top_k": 3}).json()
    assert (known["fallback"], known["score_kind"]) == (False, "model")
    assert (unknown["fallback"], unknown["score_kind"]) == (True, "play_count")
    counts = [item["score"] for item in unknown["recommended_items"]]
    assert counts == sorted(counts, reverse=True)
    assert counts[-1] > 0


@pytest.mark.parametrize(
    "raw",
    [b"\xff\xff\xff\xff", b"\x0a\x02\xc3\x28", b"\x0a\x05ab", bytes(range(256))],
    ids=["garbage", "invalid UTF-8 user_id", "truncated field", "every byte"],
)
@pytest.mark.parametrize("method", ["Recommend", "Feedback", "Plays"])
def test_grpc_message_that_does_not_parse_gets_invalid_argument(stack: LocalStack, method: str, raw: bytes) -> None:
    with grpc.insecure_channel(stack.gateway_grpc) as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(f"/recsys.v1.Recommender/{method}")
        with pytest.raises(grpc.RpcError) as refused:
            call(raw, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a valid recsys.v1." in (refused.value.details() or "")


def test_grpc_recommend_and_feedback(stack: LocalStack) -> None:
    with grpc.insecure_channel(stack.gateway_grpc) as channel:
        stub = recsys_pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]
        answer = stub.Recommend(recsys_pb2.RecommendRequest(user_id="2", top_k=4), timeout=10)
        assert len(answer.recommended_items) == 4
        assert answer.group == stack.experiment.assign("2")
        rest = post(stack, "/recommend", {"user_id": "2", "top_k": 4}).json()
        assert [i.item_id for i in answer.recommended_items] == [i["item_id"] for i in rest["recommended_items"]]

        ack = stub.Feedback(
            recsys_pb2.FeedbackRequest(
                user_id="2", group=answer.group, request_id=answer.request_id,
                clicked_item=answer.recommended_items[0].item_id,
            ),
            timeout=10,
        )  # fmt: skip
        assert len(ack.event_id) == 32

        with pytest.raises(grpc.RpcError) as bad:
            stub.Recommend(recsys_pb2.RecommendRequest(user_id="2", top_k=5000), timeout=10)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "top_k" in (bad.value.details() or "")
        with pytest.raises(grpc.RpcError) as empty:
            stub.Recommend(recsys_pb2.RecommendRequest(user_id=""), timeout=10)
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_triton_down_gives_503_within_the_deadline_and_recovers_by_itself(stack: LocalStack) -> None:
    with contextlib.ExitStack() as outage:
        if stack.watchdog is not None:  # the stack's watchdog would restart Triton in the middle of the outage
            outage.enter_context(stack.watchdog.paused())
        _triton_down_and_up(stack)
    deadline = time.monotonic() + 30
    while post(stack, "/recommend", {"user_id": "1"}).status_code != 200:
        assert time.monotonic() < deadline, "the gateway did not recover after Triton came back"
        time.sleep(0.1)


def _triton_down_and_up(stack: LocalStack) -> None:
    from trainer.triton.repository import load_all

    stack.triton.stop()
    try:
        start = time.monotonic()
        down = post(stack, "/recommend", {"user_id": "1"})
        assert time.monotonic() - start < 2.0
        assert down.status_code == 503
        assert down.headers["retry-after"] == "1"
        assert down.json()["error"]["code"] == "unavailable"
        assert httpx.get(stack.gateway_url + "/readyz").status_code == 503
    finally:
        stack.triton.start()
        load_all(stack.triton, stack.config.model_repository)
