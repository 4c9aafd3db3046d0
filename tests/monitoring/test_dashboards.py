"""grafana/dashboards and grafana/provisioning: the committed JSON is what the code generates, is well formed,
reads only known series through the provisioned datasource, and every panel query returns data.

"Returns data" is checked offline with promtool's rule unit tests: a synthetic scrape of every service (the
series the real ones export, with traffic in both groups) goes in, and each panel query is wrapped in an alert
that fires if the query is empty (``absent``) or NaN. The live test against the running stack does the same
through Prometheus's HTTP API.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from recsys.monitoring import catalog, queries
from recsys.monitoring.prometheus import PromtoolError, promtool

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian 12: apt-get install -y prometheus)",
)

DATASOURCE_UID = "recsys-prometheus"  # the provisioned uid; dashboards.DATASOURCE_UID must agree (checked below)
PROVISIONING = queries.GRAFANA_DIR / "provisioning"
DASHBOARD_FILES = sorted(queries.DASHBOARDS_DIR.glob("*.json"))
GRID_WIDTH = 24


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _without_empty(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_empty(item) for key, item in value.items() if item != {}}
    if isinstance(value, list):
        return [_without_empty(item) for item in value]
    return value


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


# Generated from code


def test_committed_dashboards_are_the_generated_ones() -> None:
    pytest.importorskip("grafana_foundation_sdk", reason="grafana-foundation-sdk (dev extra) not installed")
    from recsys.monitoring import dashboards

    assert dashboards.stale() == [], "run: python -m recsys.monitoring.dashboards"
    assert dashboards.DATASOURCE_UID == DATASOURCE_UID


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_round_trips_through_grafanas_typed_model(path: Path) -> None:
    """Every key is one Grafana's schema knows: the SDK's types (generated from that schema) drop unknown keys when
    decoding, so a misspelt key would not survive the round trip. (The decoder adds empty ``custom`` objects; empty
    objects are ignored on both sides. It does not check value types: the tests below check those that matter.)"""
    pytest.importorskip("grafana_foundation_sdk", reason="grafana-foundation-sdk (dev extra) not installed")
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()
    committed = _load(path)
    decoded = Dashboard.from_json(committed)
    assert _without_empty(json.loads(JSONEncoder().encode(decoded))) == _without_empty(committed)


# Structure


def test_dashboard_uids_and_titles_are_unique_and_match_file_names() -> None:
    loaded = [_load(path) for path in DASHBOARD_FILES]
    assert len(loaded) >= 4
    assert [d["uid"] for d in loaded] == [path.stem for path in DASHBOARD_FILES]
    assert len({d["title"] for d in loaded}) == len(loaded)
    assert all(0 < len(d["uid"]) <= 40 for d in loaded)  # Grafana's uid limit


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_is_well_formed(path: Path) -> None:
    dashboard = _load(path)
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] >= 39
    panels = list(_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(set(ids)) == len(ids)
    assert all(isinstance(i, int) and i > 0 for i in ids)
    titles = [panel["title"] for panel in panels]
    assert len(set(titles)) == len(titles), "panel titles must be unique in a dashboard"
    assert any(panel["type"] != "row" for panel in panels)
    for panel in panels:
        if panel["type"] == "row":
            assert not panel.get("targets")
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, panel["title"]
        targets = panel.get("targets", [])
        assert targets, f"{panel['title']}: no query"
        ref_ids = [target["refId"] for target in targets]
        assert len(set(ref_ids)) == len(ref_ids)
        for target in targets:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"] == panel["datasource"], panel["title"]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_panels_fit_the_grid_without_overlapping(path: Path) -> None:
    boxes: list[tuple[str, int, int, int, int]] = []
    for panel in _panels(_load(path)["panels"]):
        grid = panel["gridPos"]
        x, y, w, h = grid["x"], grid["y"], grid["w"], grid["h"]
        assert min(x, y) >= 0, panel["title"]
        assert min(w, h) >= 1, panel["title"]
        assert x + w <= GRID_WIDTH, f"{panel['title']} ends at column {x + w}"
        boxes.append((panel["title"], x, y, w, h))
    for i, (a, ax, ay, aw, ah) in enumerate(boxes):
        for b, bx, by, bw, bh in boxes[i + 1 :]:
            overlap = ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah
            assert not overlap, f"{a!r} overlaps {b!r}"


def test_panel_titles_are_unique_across_dashboards() -> None:
    """``PanelQuery.key`` (uid/title/refId) names a query unambiguously, e.g. as a pytest id in the live test."""
    keys = [query.key for query in queries.panel_queries()]
    assert len(set(keys)) == len(keys)


# What the queries read


def test_panels_read_only_catalogued_or_recorded_series() -> None:
    allowed = catalog.known_series() | queries.recorded_names()
    unknown = {q.key: sorted(q.metrics - allowed) for q in queries.panel_queries() if q.metrics - allowed}
    assert not unknown, f"panels read series missing from recsys/monitoring/catalog.py: {unknown}"


def test_panels_use_only_documented_variables() -> None:
    for query in queries.panel_queries():
        rendered = query.rendered()  # raises on an undocumented variable
        assert "$" not in rendered, query.key


def test_dashboards_cover_what_the_issue_asks_for() -> None:
    everything = " ".join(query.expr for query in queries.panel_queries())
    for needed in (
        "inference_latency_ms:p50",
        "inference_latency_ms:p95",
        "inference_latency_ms:p99",
        "nv_inference_request_summary_us",
        "click_through_rate",
        "server_error_rate",
        "nv_inference_queue_duration_us",
        "nv_inference_exec_count",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "recsys_model_age_seconds",
        "recsys_loop_cycles_total",
        "recsys_loop_last_cycle_seconds",
        "recsys_loop_last_cycle_ok",
        "recsys_loop_items_added_total",
        "organic_plays_total",
        'feedback_events_written_total{kind="play"}',
    ):
        assert needed in everything, needed


# Provisioning


def test_provisioned_datasource_is_the_one_panels_name() -> None:
    document = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    assert document["apiVersion"] == 1
    (source,) = document["datasources"]
    assert (source["type"], source["uid"]) == ("prometheus", DATASOURCE_UID)
    assert source["url"].startswith("http")
    assert source["jsonData"]["timeInterval"] == "15s"  # = the committed scrape interval


def test_dashboard_provider_reads_files() -> None:
    document = yaml.safe_load((PROVISIONING / "dashboards" / "recsys.yml").read_text())
    assert document["apiVersion"] == 1
    (provider,) = document["providers"]
    assert provider["type"] == "file"
    assert Path(provider["options"]["path"]).is_absolute()


# Every panel query is valid PromQL and returns data (offline, promtool)


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{key}="{value}"' for key, value in labels.items()) + "}"


def synthetic_scrape() -> list[dict[str, str]]:
    """20 minutes of 15 s scrapes of the gateway, the feedback writer, Triton and the training loop with traffic in
    both groups.

    Deliberately missing, as on a fresh stack: no fallback in group B, no rejected feedback event (their labelled
    series do not exist until the first one happens), so panels must still show 0 for them. And one Triton model is
    loaded but idle: its counters stay 0 and its summary quantiles are NaN, as Triton 2.51 reports them.
    """
    steps = 80
    series: list[dict[str, str]] = []

    def add(name: str, labels: dict[str, str], values: str) -> None:
        series.append({"series": f"{name}{_labels(labels)}", "values": values})

    def counter(per_scrape: float) -> str:
        return f"0+{per_scrape}x{steps}"

    def gauge(value: float) -> str:
        return f"{value}x{steps}"

    def histogram(name: str, labels: dict[str, str], cumulative: dict[str, int]) -> None:
        for le, count in cumulative.items():
            add(f"{name}_bucket", {**labels, "le": le}, counter(count))
        add(f"{name}_count", labels, counter(max(cumulative.values())))
        add(f"{name}_sum", labels, counter(3 * max(cumulative.values())))

    targets = {
        "gateway": {"job": "gateway", "instance": "gateway:8080"},
        "feedback": {"job": "feedback", "instance": "feedback:8090"},
        "triton": {"job": "triton", "instance": "triton:8002"},
        "loop": {"job": "loop", "instance": "loop:9108"},
    }
    for labels in targets.values():
        add("up", labels, gauge(1))
    gw, fb, tr = targets["gateway"], targets["feedback"], targets["triton"]
    for labels in (gw, fb):
        add("process_cpu_seconds_total", labels, counter(0.5))
        add("process_resident_memory_bytes", labels, gauge(200_000_000))

    for route, per_scrape in (("/recommend", 20), ("/feedback", 5)):
        add("gateway_requests_total", {**gw, "route": route, "method": "POST", "status": "200"}, counter(per_scrape))
        histogram("gateway_request_duration_ms", {**gw, "route": route}, {"5.0": 10, "25.0": 18, "+Inf": 20})
    for group, model in (("A", "recsys_a"), ("B", "recsys_b")):
        g = {**gw, "group": group}
        histogram("inference_latency_ms", {**g, "model": model}, {"2.5": 8, "10.0": 18, "+Inf": 20})
        add("recommendation_impressions_total", g, counter(10))
        add("recommendation_clicks_total", g, counter(2))
        add("recommendation_skips_total", g, counter(3))
    add("gateway_fallback_total", {**gw, "group": "A"}, counter(1))
    add("ab_group_mismatch_total", gw, gauge(0))
    add("gateway_impressions_dropped_total", gw, gauge(0))
    add("organic_plays_total", gw, counter(4))

    for kind, per_scrape in (("impression", 20), ("feedback", 5), ("play", 4)):
        add("feedback_events_received_total", {**fb, "kind": kind}, counter(per_scrape))
        add("feedback_events_written_total", {**fb, "kind": kind}, counter(per_scrape))
    add("feedback_spool_events", fb, gauge(0))
    add("feedback_db_up", fb, gauge(1))
    histogram("feedback_write_batch_seconds", fb, {"0.01": 2, "0.1": 3, "+Inf": 3})

    # The loop: an items cycle every 30 s (nothing new, then a release every 10 cycles), no retrain yet (its
    # labelled series do not exist until the first one).
    lp = targets["loop"]
    add("recsys_loop_cycles_total", {**lp, "kind": "items", "decision": "unchanged"}, counter(0.45))
    add("recsys_loop_cycles_total", {**lp, "kind": "items", "decision": "promoted"}, counter(0.05))
    add("recsys_loop_last_cycle_seconds", {**lp, "kind": "items"}, gauge(0.8))
    add("recsys_loop_last_cycle_ok", {**lp, "kind": "items"}, gauge(1))
    add("recsys_loop_items_added_total", lp, counter(0.05))
    add("recsys_model_age_seconds", lp, f"600+15x{steps}")

    for model in ("recsys_a", "recsys_b", "recsys_lookup"):
        m = {**tr, "model": model, "version": "1"}
        add("nv_inference_request_success", m, counter(20))
        add("nv_inference_request_failure", {**m, "reason": "BACKEND"}, gauge(0))
        add("nv_inference_count", m, counter(20))
        add("nv_inference_exec_count", m, counter(8))
        add("nv_inference_request_duration_us", m, counter(40_000))
        add("nv_inference_queue_duration_us", m, counter(4_000))
        add("nv_inference_compute_infer_duration_us", m, counter(30_000))
        add("nv_inference_pending_request_count", m, gauge(1))
        for summary in ("nv_inference_request_summary_us", "nv_inference_queue_summary_us"):
            for q, value in (("0.5", 1500), ("0.9", 2500), ("0.95", 3000), ("0.99", 4000)):
                add(summary, {**m, "quantile": q}, gauge(value))
            add(f"{summary}_count", m, counter(20))
            add(f"{summary}_sum", m, counter(40_000))
    idle = {**tr, "model": "recsys_fused", "version": "1"}
    for metric in catalog.metrics_of("triton"):
        if metric.kind in ("counter", "gauge") and "model" in metric.labels and "reason" not in metric.labels:
            add(metric.name, idle, gauge(0))
    for summary in ("nv_inference_request_summary_us", "nv_inference_queue_summary_us"):
        for q in ("0.5", "0.9", "0.95", "0.99"):
            add(summary, {**idle, "quantile": q}, " ".join(["NaN"] * (steps + 1)))
    add("nv_cpu_utilization", tr, gauge(0.4))
    add("nv_cpu_memory_used_bytes", tr, gauge(2_000_000_000))
    return series


def _probe_rules(checks: dict[str, str]) -> dict[str, Any]:
    """One alert per check that fires when the expression is empty, and one when it is NaN."""
    rules = []
    for name, expr in checks.items():
        rules.append({"alert": f"{name}__empty", "expr": f"absent({expr})"})
        rules.append({"alert": f"{name}__nan", "expr": f"({expr}) != ({expr})"})
    return {"groups": [{"name": "probes", "rules": rules}]}


def _run_probes(tmp_path: Path, checks: dict[str, str]) -> str:
    (tmp_path / "probes.yml").write_text(yaml.safe_dump(_probe_rules(checks)))
    rule_files = [str(path.resolve()) for path in sorted(queries.RULES_DIR.glob("*.yml"))]
    alerts = [f"{name}__{what}" for name in checks for what in ("empty", "nan")]
    unit_test = {
        "rule_files": [*rule_files, str(tmp_path / "probes.yml")],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": synthetic_scrape(),
                "alert_rule_test": [{"alertname": a, "eval_time": "10m", "exp_alerts": []} for a in alerts],
            }
        ],
    }
    (tmp_path / "probes_test.yml").write_text(yaml.safe_dump(unit_test, sort_keys=False))
    return promtool("test", "rules", tmp_path / "probes_test.yml")


def _checks() -> tuple[dict[str, str], dict[str, str]]:
    """(probe name -> expression, probe name -> what it checks) for every panel query and recorded series."""
    checks: dict[str, str] = {}
    names: dict[str, str] = {}
    for i, query in enumerate(queries.panel_queries()):
        checks[f"panel_{i:03d}"] = query.rendered({queries.RATE_INTERVAL: "1m"})
        names[f"panel_{i:03d}"] = query.key
    for j, recorded in enumerate(sorted(queries.recorded_names())):
        checks[f"recorded_{j:03d}"] = recorded
        names[f"recorded_{j:03d}"] = recorded
    return checks, names


@needs_promtool
def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    checks, _ = _checks()
    path = tmp_path / "panels.yml"
    rules = [{"record": f"panel:{name}", "expr": expr} for name, expr in checks.items() if name.startswith("panel")]
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    assert f"{len(rules)} rules found" in promtool("check", "rules", path)


@needs_promtool
def test_every_panel_query_and_recorded_series_returns_data(tmp_path: Path) -> None:
    checks, names = _checks()
    try:
        _run_probes(tmp_path, checks)
    except PromtoolError as exc:
        failing = sorted({names[name] for name in names if f"{name}__" in str(exc)})
        pytest.fail(f"empty or NaN on the synthetic scrape: {failing}\n{exc}")


@needs_promtool
def test_the_probe_fails_for_a_query_with_no_data(tmp_path: Path) -> None:
    """The harness bites: a query over a series nobody exports, or one that is NaN, fails it."""
    with pytest.raises(PromtoolError, match="missing__empty"):
        _run_probes(tmp_path, {"missing": "sum(rate(no_such_metric_total[1m]))"})
    with pytest.raises(PromtoolError, match="nan__nan"):
        _run_probes(tmp_path, {"nan": "sum(rate(recommendation_clicks_total[1m])) * 0 / 0"})
