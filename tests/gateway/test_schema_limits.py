"""One source for limits: every bound the OpenAPI document states is the one the service enforces (issue 14: the
schema allowed inference_time_ms = 3,600,000 while the service refused it). No servers needed: the document of
an app built like the gateway's, and the service layer called directly at and past each bound."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from feedback import events as writer_events
from feedback.events import EventBatch, Impression
from feedback.events import Feedback as FeedbackIn
from feedback.events import Play as PlayIn
from gateway.events import EventSink
from gateway.experiment import load_experiment
from gateway.metrics import GatewayMetrics
from gateway.rest import create_app
from gateway.service import FeedbackEvent, GatewayError, GatewayService, PlayEvent
from recsys.core import limits
from recsys.core.errors import ConfigError
from recsys.core.settings import get_settings
from recsys.core.triton_client import AsyncTritonRecommender

EXPERIMENT = Path(__file__).resolve().parents[2] / "gateway" / "experiment.yaml"


class AcceptingSink(EventSink):
    """Acknowledges every event at once (what a writer that accepts it does) and keeps nothing."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        super().__init__("http://127.0.0.1:9", timeout_s=0.1, metrics=metrics)

    async def _post(self, events: list[dict[str, Any]]) -> None:
        return None


def _service() -> GatewayService:
    metrics = GatewayMetrics()
    triton = AsyncTritonRecommender("127.0.0.1:9", timeout_s=0.1)
    return GatewayService(
        experiment=load_experiment(EXPERIMENT), triton=triton, events=AcceptingSink(metrics), metrics=metrics,
        max_top_k=250,
    )  # fmt: skip


@pytest.fixture(scope="module")
def schemas() -> dict[str, Any]:
    async def build() -> dict[str, Any]:  # the service's gRPC channel needs a running loop
        document = create_app(_service()).openapi()  # what GET /openapi.json answers
        schemas: dict[str, Any] = document["components"]["schemas"]
        return schemas

    return asyncio.run(build())


def _number(prop: dict[str, Any]) -> dict[str, Any]:
    """The numeric branch of a nullable field (``anyOf: [{...}, {"type": "null"}]``)."""
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") in ("integer", "number"):
            found: dict[str, Any] = branch
            return found
        if "anyOf" in branch:
            return _number(branch)
    raise AssertionError(f"no numeric branch in {prop}")


def test_every_bound_of_the_document_is_the_services(schemas: dict[str, Any]) -> None:
    feedback = schemas["FeedbackRequest"]["properties"]
    assert _number(feedback["inference_time_ms"])["maximum"] == limits.MAX_INFERENCE_TIME_MS
    assert _number(feedback["inference_time_ms"])["minimum"] == 0
    assert feedback["group"]["maxLength"] == limits.MAX_GROUP_CHARS
    assert feedback["skipped_items"]["maxItems"] == limits.MAX_SKIPPED_ITEMS
    for name in ("request_id", "clicked_item", "event_id"):
        strings = [b for b in feedback[name].get("anyOf", [feedback[name]]) if b.get("type") == "string"]
        assert [b["maxLength"] for b in strings] == [limits.MAX_ID_CHARS], name
    top_k = _number(schemas["RecommendRequest"]["properties"]["top_k"])
    assert (top_k["minimum"], top_k["maximum"]) == (1, 250)  # the running service's max_top_k
    play = schemas["Play"]["properties"]
    assert _number(play["ms_played"])["maximum"] == limits.MAX_MS_PLAYED
    assert play["ts_ms"]["minimum"] == limits.PLAY_TS_MIN_MS
    assert schemas["PlayBatch"]["properties"]["plays"]["maxItems"] == limits.MAX_PLAYS_PER_REQUEST


def _feedback(**fields: Any) -> FeedbackEvent:
    base: dict[str, Any] = {"user_id": "1", "group": "A", "request_id": "r", "clicked_item": "7", "skipped_items": ()}
    return FeedbackEvent(**(base | fields))


async def _accepted(call: Any) -> bool:
    try:
        await call
    except GatewayError:
        return False
    return True


async def _check_each_bound() -> None:
    service = _service()
    top = limits.MAX_INFERENCE_TIME_MS
    assert await _accepted(service.feedback(_feedback(inference_time_ms=float(top))))
    assert not await _accepted(service.feedback(_feedback(inference_time_ms=top + 0.001)))
    assert await _accepted(service.feedback(_feedback(skipped_items=("x",) * limits.MAX_SKIPPED_ITEMS)))
    assert not await _accepted(service.feedback(_feedback(skipped_items=("x",) * (limits.MAX_SKIPPED_ITEMS + 1))))
    assert await _accepted(service.feedback(_feedback(request_id="r" * limits.MAX_ID_CHARS)))
    assert not await _accepted(service.feedback(_feedback(request_id="r" * (limits.MAX_ID_CHARS + 1))))
    now_ms = 1_800_000_000_000
    play = PlayEvent("1", "7", limits.PLAY_TS_MIN_MS, limits.MAX_MS_PLAYED)
    assert await _accepted(service.plays([play] * limits.MAX_PLAYS_PER_REQUEST))
    assert not await _accepted(service.plays([play] * (limits.MAX_PLAYS_PER_REQUEST + 1)))
    assert not await _accepted(service.plays([PlayEvent("1", "7", limits.PLAY_TS_MIN_MS - 1)]))
    assert not await _accepted(service.plays([PlayEvent("1", "7", now_ms, limits.MAX_MS_PLAYED + 1)]))


def test_the_service_takes_each_documented_maximum_and_refuses_one_past_it() -> None:
    asyncio.run(_check_each_bound())


def test_the_writer_checks_the_same_limits_as_the_gateway() -> None:
    """One source (recsys.core.limits): the writer repeated them as bare numbers, free to drift from the gateway's;
    a field the gateway accepts and the writer refuses gets a whole batch of impressions refused."""
    impression = Impression.model_json_schema()["properties"]
    feedback = FeedbackIn.model_json_schema()["properties"]
    play = PlayIn.model_json_schema()["properties"]
    assert impression["items"]["maxItems"] == limits.MAX_TOP_K
    assert impression["items"]["items"]["maxLength"] == limits.MAX_ID_CHARS
    assert impression["group"]["maxLength"] == feedback["group"]["maxLength"] == limits.MAX_GROUP_CHARS
    assert feedback["skipped_items"]["maxItems"] == limits.MAX_SKIPPED_ITEMS
    assert feedback["inference_time_ms"]["anyOf"][0]["le"] == limits.MAX_INFERENCE_TIME_MS  # int or float: "le"
    assert _number(play["ms_played"])["maximum"] == limits.MAX_MS_PLAYED
    assert play["ts_ms"]["minimum"] == limits.PLAY_TS_MIN_MS
    assert EventBatch.model_json_schema()["properties"]["events"]["maxItems"] == limits.MAX_EVENTS_PER_POST
    assert writer_events.PLAY_MAX_FUTURE_MS > limits.PLAY_MAX_FUTURE_MS  # the writer's clock may lag a little


@pytest.mark.parametrize("value", [limits.MAX_TOP_K + 1, 2000])
def test_a_max_top_k_setting_past_what_the_models_serve_is_refused(value: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """RECSYS_MAX_TOP_K=2000 was accepted: Triton then refused such requests, and the writer a whole batch of
    impressions holding one list of more than 1,000 items."""
    monkeypatch.setenv("RECSYS_MAX_TOP_K", str(value))
    with pytest.raises(ConfigError, match="RECSYS_MAX_TOP_K"):
        get_settings()
    monkeypatch.setenv("RECSYS_MAX_TOP_K", str(limits.MAX_TOP_K))
    assert get_settings().max_top_k == limits.MAX_TOP_K
