"""REST and gRPC hand the service layer the same feedback event; no Triton, writer or database needed (the event
sink records what it would send)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import httpx

from gateway.events import EventSink
from gateway.experiment import load_experiment
from gateway.grpc_api import add_to_server
from gateway.metrics import GatewayMetrics
from gateway.rest import create_app
from gateway.service import GatewayService
from recsys.core.triton_client import AsyncTritonRecommender
from recsys.v1 import recsys_pb2, recsys_pb2_grpc

EXPERIMENT = Path(__file__).resolve().parents[2] / "gateway" / "experiment.yaml"


class RecordingSink(EventSink):
    """Keeps the feedback it is asked to deliver instead of posting it to a writer."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        super().__init__("http://127.0.0.1:9", timeout_s=0.1, metrics=metrics)
        self.sent: list[dict[str, Any]] = []

    async def send_feedback(self, event: dict[str, Any]) -> None:
        self.sent.append(event)


async def _latencies_seen(latency: float | None) -> tuple[object, object]:
    """The ``inference_time_ms`` the writer would get for one feedback event sent over REST, then over gRPC."""
    metrics = GatewayMetrics()
    sink = RecordingSink(metrics)
    triton = AsyncTritonRecommender("127.0.0.1:9", timeout_s=0.1)  # never called by feedback
    service = GatewayService(experiment=load_experiment(EXPERIMENT), triton=triton, events=sink, metrics=metrics)
    event: dict[str, Any] = {"user_id": "42", "group": "A", "request_id": "r1", "clicked_item": "7"}
    if latency is not None:
        event["inference_time_ms"] = latency

    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        response = await client.post("/feedback", json=event)
    assert response.status_code == 202, response.text

    server = grpc.aio.server()
    add_to_server(server, service)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = recsys_pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]
            await stub.Feedback(recsys_pb2.FeedbackRequest(**event), timeout=5)
    finally:
        await server.stop(grace=None)
        await triton.close()
        await sink.close(drain_timeout_s=0.1)
    rest, grpc_sent = sink.sent
    return rest["inference_time_ms"], grpc_sent["inference_time_ms"]


def test_zero_inference_time_stays_zero_over_grpc_as_over_rest() -> None:
    """Regression: gRPC turned an ``inference_time_ms`` of 0.0 into null (``value or None`` on a proto3 scalar
    without presence); the field is ``optional`` now and read with ``HasField``."""
    rest, over_grpc = asyncio.run(_latencies_seen(0.0))
    assert rest == 0.0
    assert over_grpc == 0.0
    assert over_grpc is not None


def test_a_latency_and_no_latency_reach_the_writer_alike_over_both_transports() -> None:
    assert asyncio.run(_latencies_seen(12.5)) == (12.5, 12.5)
    assert asyncio.run(_latencies_seen(None)) == (None, None)
