"""The writer's Prometheus metrics, on a registry of its own."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest


@dataclass
class WriterMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        ProcessCollector(registry=r)
        self.received = Counter("feedback_events_received", "events accepted (spooled)", ["kind"], registry=r)
        self.written = Counter("feedback_events_written", "events newly stored in PostgreSQL", ["kind"], registry=r)
        self.rejected = Counter("feedback_events_rejected", "events refused or dead-lettered", ["reason"], registry=r)
        self.spool_events = Gauge("feedback_spool_events", "events accepted but not yet in PostgreSQL", registry=r)
        self.batch_seconds = Histogram(
            "feedback_write_batch_seconds", "time of one batched database write", registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )  # fmt: skip
        self.db_up = Gauge("feedback_db_up", "1 when the last database write succeeded", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
