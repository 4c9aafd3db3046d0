"""The gateway's Prometheus metrics, on a registry of its own (no process-global state: tests build many apps)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest

#: Milliseconds; dense below 10 ms where the served path lives, sparse up to the deadline range.
LATENCY_BUCKETS_MS = (0.5, 1, 1.5, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 250, 500, 1000, 2500)


@dataclass
class GatewayMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        ProcessCollector(registry=r)
        self.inference_latency_ms = Histogram(
            "inference_latency_ms", "Triton call latency seen by the gateway (ms)", ["group", "model"],
            buckets=LATENCY_BUCKETS_MS, registry=r,
        )  # fmt: skip
        self.requests = Counter(
            "gateway_requests", "HTTP requests by route, method and status", ["route", "method", "status"], registry=r
        )
        self.request_duration_ms = Histogram(
            "gateway_request_duration_ms", "whole request time in the gateway (ms)", ["route"],
            buckets=LATENCY_BUCKETS_MS, registry=r,
        )  # fmt: skip
        self.impressions = Counter("recommendation_impressions", "recommendation lists served", ["group"], registry=r)
        self.clicks = Counter("recommendation_clicks", "clicks reported by feedback", ["group"], registry=r)
        self.skips = Counter("recommendation_skips", "skipped items reported by feedback", ["group"], registry=r)
        self.fallbacks = Counter("gateway_fallback", "lists answered by the popularity fallback", ["group"], registry=r)
        self.group_mismatch = Counter(
            "ab_group_mismatch", "X-AB-Group headers that disagree with the experiment config", registry=r
        )
        self.plays = Counter(
            "organic_plays", "organic plays acknowledged by the writer (POST /plays, gRPC Plays)", registry=r
        )
        self.impressions_dropped = Counter(
            "gateway_impressions_dropped", "impressions not delivered to the writer (buffer full)", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
