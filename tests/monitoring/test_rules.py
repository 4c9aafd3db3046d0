"""grafana/prometheus: the scrape config and the rules, checked by the real promtool and by what they read.

promtool tests skip, with the reason, where promtool is not installed (bootstrap installs Debian's prometheus).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from recsys.monitoring import catalog, queries
from recsys.monitoring.prometheus import CONFIG_FILE, RULE_TESTS_DIR, PromtoolError, promtool, render_config

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian 12: apt-get install -y prometheus)",
)

RULE_FILES = sorted(queries.RULES_DIR.glob("*.yml"))
RULE_TESTS = sorted(RULE_TESTS_DIR.glob("*.yml"))
REQUIRED_RECORDS = {
    "server_error_rate",
    "click_through_rate",
    "inference_latency_ms:p50",
    "inference_latency_ms:p95",
    "inference_latency_ms:p99",
}
REQUIRED_ALERTS = {
    "GatewayServerErrorRateHigh",
    "InferenceLatencyObjectiveBreached",
    "TritonDown",
    "ABSampleRatioMismatch",
    "LoopLastCycleFailed",
    "ServedModelStale",
    "LoopItemsCycleOverdue",
}
LOCAL_TARGETS = {
    "gateway": ["127.0.0.1:8080"],
    "feedback": ["127.0.0.1:8090"],
    "triton": ["127.0.0.1:8002"],
    "loop": ["127.0.0.1:9108"],
}


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@needs_promtool
def test_committed_config_passes_promtool_with_its_rule_files() -> None:
    out = promtool("check", "config", CONFIG_FILE)
    assert f"{len(RULE_FILES)} rule files found" in out


@needs_promtool
@pytest.mark.parametrize("rule_file", RULE_FILES, ids=lambda p: p.name)
def test_rule_file_passes_promtool_check_rules(rule_file: Path) -> None:
    promtool("check", "rules", rule_file)


@needs_promtool
@pytest.mark.parametrize("test_file", RULE_TESTS, ids=lambda p: p.name)
def test_rule_unit_tests_pass(test_file: Path) -> None:
    assert "SUCCESS" in promtool("test", "rules", test_file)


@needs_promtool
def test_rule_unit_tests_fail_on_a_wrong_expectation(tmp_path: Path) -> None:
    """The unit tests are not vacuous: expecting an error rate of 0.09 where it is 0.08 fails."""
    document = _load(RULE_TESTS_DIR / "recording_test.yml")
    document["rule_files"] = [str((RULE_TESTS_DIR / f).resolve()) for f in document["rule_files"]]
    first = document["tests"][0]["promql_expr_test"][0]
    assert first["expr"] == "round(server_error_rate, 0.001)"
    first["exp_samples"][0]["value"] = 0.09
    broken = tmp_path / "broken_test.yml"
    broken.write_text(yaml.safe_dump(document))
    with pytest.raises(PromtoolError, match="server_error_rate"):
        promtool("test", "rules", broken)


def test_required_rules_exist() -> None:
    assert queries.recorded_names() >= REQUIRED_RECORDS
    assert {rule.name for rule in queries.alerting_rules()} >= REQUIRED_ALERTS


def test_rules_read_only_catalogued_or_recorded_series() -> None:
    allowed = catalog.known_series() | queries.recorded_names()
    unknown = {
        rule.name: sorted(rule.metrics - allowed) for rule in queries.rule_expressions() if rule.metrics - allowed
    }
    assert not unknown, f"rules read series missing from recsys/monitoring/catalog.py: {unknown}"


def test_every_recorded_series_has_a_unit_test() -> None:
    tested: set[str] = set()
    for path in RULE_TESTS:
        for case in _load(path)["tests"]:
            for check in case.get("promql_expr_test", []):
                tested |= queries.metric_names(check["expr"])
    assert queries.recorded_names() <= tested, sorted(queries.recorded_names() - tested)


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in _load(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = {rule.name for rule in queries.alerting_rules()}
    assert alerts <= firing, f"never seen firing: {sorted(alerts - firing)}"
    assert alerts <= quiet, f"never seen quiet: {sorted(alerts - quiet)}"


def test_configured_shares_form_a_split() -> None:
    shares = queries.configured_shares()
    assert len(shares) >= 2
    assert all(0 < share < 1 for share in shares.values())
    assert sum(shares.values()) == pytest.approx(1.0)


def test_scrape_config_names_the_four_jobs_with_production_intervals() -> None:
    config = _load(CONFIG_FILE)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert tuple(jobs) == catalog.JOBS
    assert jobs["triton"]["static_configs"][0]["targets"] == ["triton:8002"]
    assert jobs["loop"]["static_configs"][0]["targets"] == ["loop:9108"]
    assert config["global"]["scrape_interval"] == "15s"
    assert config["rule_files"] == ["rules/*.yml"]


@needs_promtool
def test_rendered_local_config_passes_promtool(tmp_path: Path) -> None:
    text = render_config(targets=LOCAL_TARGETS, scrape_interval="1s", evaluation_interval="1s")
    path = tmp_path / "prometheus.yml"
    path.write_text(text)
    out = promtool("check", "config", path)
    assert f"{len(RULE_FILES)} rule files found" in out
    config = yaml.safe_load(text)
    assert config["global"] == {"scrape_interval": "1s", "evaluation_interval": "1s"}
    assert {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]} == LOCAL_TARGETS
    assert all(Path(pattern).is_absolute() for pattern in config["rule_files"])


@needs_promtool
def test_a_job_with_no_target_passes_promtool(tmp_path: Path) -> None:
    """The local stack scrapes no loop unless it is told where one runs: an empty target list is valid."""
    path = tmp_path / "prometheus.yml"
    path.write_text(render_config(targets={**LOCAL_TARGETS, "loop": []}))
    promtool("check", "config", path)
    jobs = {job["job_name"]: job for job in yaml.safe_load(path.read_text())["scrape_configs"]}
    assert jobs["loop"]["static_configs"] == [{"targets": []}]


def test_render_config_refuses_a_job_the_config_lacks() -> None:
    with pytest.raises(KeyError, match="postgres"):
        render_config(targets={"postgres": ["127.0.0.1:9187"]})


def test_render_config_without_changes_keeps_the_committed_settings() -> None:
    config = yaml.safe_load(render_config())
    committed = _load(CONFIG_FILE)
    assert config["global"] == committed["global"]
    assert config["scrape_configs"] == committed["scrape_configs"]
