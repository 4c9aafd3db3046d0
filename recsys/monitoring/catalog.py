"""Every metric the dashboards and rules may read, in one place.

The gateway and feedback-writer names are the project contract (prometheus-client metrics); the training loop's
are those ``recsys retrain --metrics-port`` serves (``recsys.loop.runner.LoopMetrics``); the Triton names are
those Triton 2.51 serves on :8002. A test checks that every PromQL expression in ``grafana/`` reads only series
named here (or series the rules themselves record), so a renamed metric fails offline instead of leaving a panel
empty in production.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MetricKind = Literal["counter", "gauge", "histogram", "summary"]

#: Prometheus job names, as in ``grafana/prometheus/prometheus.yml``.
JOBS = ("gateway", "feedback", "triton", "loop")


@dataclass(frozen=True)
class Metric:
    """One exported metric. ``in_contract`` is False for names the contract does not list but the code exports:
    the gateway's dropped-impression counter, and what Triton 2.51 serves beyond the contract (the summaries need
    ``--metrics-config=summary_latencies=true``, which ``recsys serve triton`` passes)."""

    name: str
    kind: MetricKind
    job: str
    labels: tuple[str, ...]
    in_contract: bool = True

    @property
    def series(self) -> tuple[str, ...]:
        """The series names Prometheus stores for this metric (a histogram is three series, a summary two more)."""
        if self.kind == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        if self.kind == "summary":
            return (self.name, f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)


_PROCESS = (
    Metric("process_cpu_seconds_total", "counter", "gateway", ()),
    Metric("process_resident_memory_bytes", "gauge", "gateway", ()),
    Metric("process_cpu_seconds_total", "counter", "feedback", ()),
    Metric("process_resident_memory_bytes", "gauge", "feedback", ()),
)

_GATEWAY = (
    Metric("inference_latency_ms", "histogram", "gateway", ("group", "model")),
    Metric("gateway_requests_total", "counter", "gateway", ("route", "method", "status")),
    Metric("gateway_request_duration_ms", "histogram", "gateway", ("route",)),
    Metric("recommendation_impressions_total", "counter", "gateway", ("group",)),
    Metric("recommendation_clicks_total", "counter", "gateway", ("group",)),
    Metric("recommendation_skips_total", "counter", "gateway", ("group",)),
    Metric("gateway_fallback_total", "counter", "gateway", ("group",)),
    Metric("ab_group_mismatch_total", "counter", "gateway", ()),
    # Organic plays (POST /plays, gRPC Plays) the writer acknowledged; beyond the contract, like the next one.
    Metric("organic_plays_total", "counter", "gateway", (), in_contract=False),
    # Beyond the contract, exported by gateway/metrics.py: impressions lost because the writer's buffer was full.
    Metric("gateway_impressions_dropped_total", "counter", "gateway", (), in_contract=False),
)

#: ``kind``: impression, feedback or play (organic plays from POST /plays).
_FEEDBACK = (
    Metric("feedback_events_received_total", "counter", "feedback", ("kind",)),
    Metric("feedback_events_written_total", "counter", "feedback", ("kind",)),
    Metric("feedback_events_rejected_total", "counter", "feedback", ("reason",)),
    Metric("feedback_spool_events", "gauge", "feedback", ()),
    Metric("feedback_write_batch_seconds", "histogram", "feedback", ()),
    Metric("feedback_db_up", "gauge", "feedback", ()),
)

#: ``recsys retrain --metrics-port``: a registry of its own, so no process_* series. ``kind`` is ``items`` or
#: ``retrain``; a labelled series appears with the first cycle of its kind (and decision).
_LOOP = (
    Metric("recsys_loop_cycles_total", "counter", "loop", ("kind", "decision"), in_contract=False),
    Metric("recsys_loop_last_cycle_seconds", "gauge", "loop", ("kind",), in_contract=False),
    Metric("recsys_loop_last_cycle_ok", "gauge", "loop", ("kind",), in_contract=False),
    Metric("recsys_loop_items_added_total", "counter", "loop", (), in_contract=False),
    Metric("recsys_model_age_seconds", "gauge", "loop", (), in_contract=False),
)

_TRITON_MODEL = ("model", "version")
_TRITON = (
    Metric("nv_inference_request_success", "counter", "triton", _TRITON_MODEL),
    Metric("nv_inference_request_failure", "counter", "triton", (*_TRITON_MODEL, "reason")),
    Metric("nv_inference_count", "counter", "triton", _TRITON_MODEL),
    Metric("nv_inference_exec_count", "counter", "triton", _TRITON_MODEL),
    Metric("nv_inference_request_duration_us", "counter", "triton", _TRITON_MODEL),
    Metric("nv_inference_queue_duration_us", "counter", "triton", _TRITON_MODEL),
    Metric("nv_inference_compute_infer_duration_us", "counter", "triton", _TRITON_MODEL),
    # Beyond the contract, served by Triton 2.51 (checked against a running server's /metrics):
    Metric("nv_inference_pending_request_count", "gauge", "triton", _TRITON_MODEL, in_contract=False),
    # Set by recsys_scorer_ann (serving.models.AnnScorerModel) from its publish.json: the recall gate's figure.
    Metric("recsys_ann_recall_at_10", "gauge", "triton", _TRITON_MODEL, in_contract=False),
    Metric("nv_inference_request_summary_us", "summary", "triton", (*_TRITON_MODEL, "quantile"), in_contract=False),
    Metric("nv_inference_queue_summary_us", "summary", "triton", (*_TRITON_MODEL, "quantile"), in_contract=False),
    # Host-level (the node Triton runs on), Triton has no process_* metrics of its own.
    Metric("nv_cpu_utilization", "gauge", "triton", (), in_contract=False),
    Metric("nv_cpu_memory_used_bytes", "gauge", "triton", (), in_contract=False),
)

#: Written by Prometheus itself for every target.
_PROMETHEUS = (Metric("up", "gauge", "*", ()),)

METRICS: tuple[Metric, ...] = _PROCESS + _GATEWAY + _FEEDBACK + _LOOP + _TRITON + _PROMETHEUS


def known_series() -> frozenset[str]:
    """Every series name an expression may select (before recording rules add their own)."""
    return frozenset(series for metric in METRICS for series in metric.series)


def metrics_of(job: str) -> tuple[Metric, ...]:
    """The metrics one job exports (``up`` belongs to every job)."""
    return tuple(m for m in METRICS if m.job in (job, "*"))
