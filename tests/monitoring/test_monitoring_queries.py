"""recsys.monitoring.queries: reading expressions back from the committed files, variables and metric names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsys.monitoring import queries


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        (
            'sum by (route, status) (rate(gateway_requests_total{status=~"5.."}[$__rate_interval]))',
            {"gateway_requests_total"},
        ),
        (
            "histogram_quantile(0.99, sum by (group, model, le) (rate(inference_latency_ms_bucket[1m])))",
            {"inference_latency_ms_bucket"},
        ),
        ("(sum(rate(a_total[1m])) or vector(0)) / (sum(rate(b_total[1m])) > 0)", {"a_total", "b_total"}),
        ("x / on () group_left ab:total:increase1h", {"x", "ab:total:increase1h"}),
        ("ab:sample_ratio_chi2:1h > 10.83 and on () ab:n:1h >= 2e2", {"ab:sample_ratio_chi2:1h", "ab:n:1h"}),
        ('max by (model) (nv_summary_us{quantile="0.99", model=~"recsys_(a|b)"}) / 1000', {"nv_summary_us"}),
        ("rate(c[5m] offset 1h) * 0 unless bool d", {"c", "d"}),
        ('absent(up{job="triton"})', {"up"}),
        ("vector(0.5)", set()),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert queries.metric_names(expr) == names


def test_substitute_replaces_each_spelling_of_a_variable() -> None:
    expr = "rate(a[$__rate_interval]) + rate(b[${__rate_interval}]) + rate(c[[[__rate_interval]]])"
    assert queries.substitute(expr, {"$__rate_interval": "30s"}) == "rate(a[30s]) + rate(b[30s]) + rate(c[30s])"
    assert queries.substitute("rate(a[$__rate_interval])") == "rate(a[1m])"


def test_substitute_refuses_an_undocumented_variable() -> None:
    with pytest.raises(ValueError, match=r"\$group"):
        queries.substitute('rate(a{group="$group"}[1m])')


def test_panel_queries_reads_targets_of_panels_inside_collapsed_rows(tmp_path: Path) -> None:
    dashboard = {
        "uid": "d",
        "title": "D",
        "panels": [
            {
                "type": "row",
                "id": 1,
                "title": "r",
                "panels": [{"id": 2, "title": "inner", "targets": [{"refId": "A", "expr": "up"}]}],
            },
            {"id": 3, "title": "outer", "targets": [{"refId": "A", "expr": "x", "legendFormat": "{{job}}"}]},
        ],
    }
    (tmp_path / "d.json").write_text(json.dumps(dashboard))
    found = queries.panel_queries(tmp_path)
    assert [(q.panel_title, q.expr, q.legend) for q in found] == [("inner", "up", ""), ("outer", "x", "{{job}}")]
    assert found[0].key == "d/inner/A"


def test_rule_expressions_read_both_rule_files() -> None:
    rules = queries.rule_expressions()
    assert {rule.file for rule in rules} == {"recording.yml", "alerts.yml"}
    error_rate = next(rule for rule in rules if rule.name == "server_error_rate")
    assert error_rate.kind == "record"
    assert error_rate.metrics == {"gateway_requests_total"}
    triton_down = next(rule for rule in rules if rule.name == "TritonDown")
    assert (triton_down.kind, triton_down.for_, triton_down.expr) == ("alert", "1m", 'up{job="triton"} == 0')


def test_configured_shares_are_the_50_50_split() -> None:
    assert queries.configured_shares() == {"A": 0.5, "B": 0.5}
