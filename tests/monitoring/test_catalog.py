"""The metric catalogue against the code that exports it: every catalogued gateway and feedback-writer series is one
the services' prometheus-client registries really produce, with the catalogued labels; the A/B split the rules
assume is the experiment's."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from feedback.metrics import WriterMetrics
from gateway.experiment import parse_experiment
from gateway.metrics import GatewayMetrics
from recsys.loop.runner import LoopMetrics
from recsys.monitoring import catalog, queries

EXPERIMENT_FILE = queries.GRAFANA_DIR.parent / "gateway" / "experiment.yaml"


def _exported_series(metrics: Any, job: str) -> dict[str, set[str]]:
    """Give every labelled metric one child with the catalogued label names (prometheus-client refuses other
    names), then read the registry: {series name: label names}."""
    by_series = {series: m for m in catalog.metrics_of(job) for series in m.series}
    for wrapper in vars(metrics).values():
        if not isinstance(wrapper, MetricWrapperBase):
            continue
        (family,) = list(wrapper.describe())
        name = f"{family.name}_total" if family.type == "counter" else family.name
        entry = by_series.get(name) or by_series.get(f"{name}_bucket")
        if entry is not None and entry.labels:
            wrapper.labels(**dict.fromkeys(entry.labels, "x"))
    exported: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    return exported


@pytest.mark.parametrize(
    ("job", "factory"), [("gateway", GatewayMetrics), ("feedback", WriterMetrics), ("loop", LoopMetrics)]
)
def test_catalogued_series_are_exported_with_their_labels(job: str, factory: Any) -> None:
    exported = _exported_series(factory(), job)
    for metric in catalog.metrics_of(job):
        if metric.name == "up":  # Prometheus writes it, not the service
            continue
        for series in metric.series:
            assert series in exported, f"{job} does not export {series}"
            assert set(metric.labels) <= exported[series], (series, sorted(exported[series]))


def test_catalogued_labels_are_refused_when_wrong() -> None:
    """The check above bites: prometheus-client rejects label names a metric was not declared with."""
    with pytest.raises(ValueError, match="label"):
        GatewayMetrics().impressions.labels(variant="A")


def test_configured_shares_match_the_experiment_file() -> None:
    experiment = parse_experiment(EXPERIMENT_FILE.read_text(), str(EXPERIMENT_FILE))
    assert queries.configured_shares() == {group.name: float(group.share) / 100 for group in experiment.groups}


def test_every_job_has_catalogued_metrics() -> None:
    for job in catalog.JOBS:
        assert [m for m in catalog.metrics_of(job) if m.job == job], job
