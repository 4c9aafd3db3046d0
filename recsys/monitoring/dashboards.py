"""The Grafana dashboards as code: the source of ``grafana/dashboards/*.json``.

Each dashboard is declared as plain data (rows of panels, each with PromQL queries) and turned into Grafana's
dashboard model by grafana-foundation-sdk (the ``dev`` extra), whose types are generated from Grafana's own schema.
Regenerate after an edit, and check that the committed JSON is current (a test does the same):

    python -m recsys.monitoring.dashboards           # writes grafana/dashboards/*.json
    python -m recsys.monitoring.dashboards --check   # exit 1 if a committed file differs

Every panel reads the provisioned Prometheus datasource (uid ``DATASOURCE_UID``, see
``grafana/provisioning/datasources/prometheus.yml``). Queries use recorded series where a rule exists and
``$__rate_interval`` windows otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common, dashboard

from recsys.monitoring.queries import DASHBOARDS_DIR, RATE_INTERVAL

DATASOURCE_UID = "recsys-prometheus"
DATASOURCE = dashboard.DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)
TAGS = ["recsys"]
GRID_WIDTH = 24

Kind = Literal["timeseries", "stat"]


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class PanelSpec:
    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: Kind = "timeseries"
    width: int = 12
    height: int = 8
    #: drawn as a red line (time series) or the red step (stat)
    threshold: float | None = None


@dataclass(frozen=True)
class RowSpec:
    title: str
    panels: tuple[PanelSpec, ...]


@dataclass(frozen=True)
class DashboardSpec:
    uid: str
    title: str
    description: str
    rows: tuple[RowSpec, ...]

    @property
    def filename(self) -> str:
        return f"{self.uid}.json"


# PromQL helpers: one spelling for each idiom used below.


def rate(metric: str, by: str = "", selector: str = "") -> str:
    """``sum by (<by>) (rate(metric{selector}[$__rate_interval]))``; ``by=""`` sums everything."""
    inner = f"rate({metric}{selector}[{RATE_INTERVAL}])"
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"


def per(numerator: str, denominator: str, by: str) -> str:
    """Rate ratio by ``by``; a missing numerator series reads as 0 (while the denominator has traffic), and no
    traffic in the window gives no sample instead of NaN."""
    den = rate(denominator, by)
    return f"({rate(numerator, by)} or {den} * 0) / ({den} > 0)"


def or_zero(expr: str) -> str:
    """``expr or vector(0)``: labelled series appear only once their first event happened (a rejection, say);
    until then the panel shows 0 instead of nothing."""
    return f"{expr} or vector(0)"


def mean(total: str, count: str, by: str, scale: str = "") -> str:
    """Mean per event from a cumulative total and an event counter (Triton's ``*_duration_us``)."""
    return f"{rate(total, by)} / ({rate(count, by)} > 0){scale}"


def quantile(q: float, histogram: str, by: str) -> str:
    """A quantile from a histogram's buckets; ``>= 0`` drops the NaN of a series with no observation in the window."""
    labels = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({histogram}_bucket[{RATE_INTERVAL}]))) >= 0"


def quantiles(histogram: str, by: str, legend: str) -> tuple[Query, ...]:
    return tuple(Query(quantile(q, histogram, by), f"p{round(q * 100)} {legend}".strip()) for q in (0.5, 0.95, 0.99))


def triton_summary(summary: str, q: str, legend: str) -> Query:
    """A quantile Triton computes itself (``summary_latencies``), microseconds to milliseconds; ``max`` across
    versions and pods, since summary quantiles cannot be averaged. ``>= 0`` drops the NaN Triton reports for a
    model with no recent request (one loaded but idle)."""
    return Query(f'max by (model) ({summary}{{quantile="{q}"}} >= 0) / 1000', legend)


US_TO_MS = " / 1000"
LOOP_CYCLES = "recsys_loop_cycles_total"
#: ServedModelStale's threshold in grafana/prometheus/rules/alerts.yml (24 hours).
LOOP_STALE_S = 24 * 3600
IMPRESSIONS = "recommendation_impressions_total"

SERVICE = DashboardSpec(
    uid="recsys-service",
    title="Recsys / Service",
    description="Gateway traffic, errors and latency; the feedback writer.",
    rows=(
        RowSpec(
            "Traffic and errors",
            (
                PanelSpec(
                    "Requests per second by route and status",
                    "Gateway responses per second, by route and HTTP status.",
                    (Query(rate("gateway_requests_total", "route, status"), "{{route}} {{status}}"),),
                    unit="reqps",
                ),
                PanelSpec(
                    "Server error rate",
                    "Share of gateway responses that are HTTP 5xx (recording rule server_error_rate). "
                    "The alert fires above 1% for 5 minutes.",
                    (Query("server_error_rate", "5xx share"),),
                    unit="percentunit",
                    threshold=0.01,
                ),
                PanelSpec(
                    "Fallback share by group",
                    "Share of recommendations served by the fallback (cold start or Triton unavailable), by A/B group.",
                    (Query(per("gateway_fallback_total", IMPRESSIONS, "group"), "{{group}}"),),
                    unit="percentunit",
                ),
                PanelSpec(
                    "Gateway request duration by route",
                    "Whole-request latency at the gateway, from the gateway_request_duration_ms histogram.",
                    quantiles("gateway_request_duration_ms", "route", "{{route}}"),
                    unit="ms",
                ),
            ),
        ),
        RowSpec(
            "Inference latency",
            (
                PanelSpec(
                    "Inference latency by group and model",
                    "The Triton call as the gateway times it (recording rules inference_latency_ms:p50/p95/p99). "
                    "Objective: p99 under 100 ms.",
                    tuple(
                        Query(f"inference_latency_ms:{p}", f"{p} {{{{group}}}} {{{{model}}}}")
                        for p in ("p50", "p95", "p99")
                    ),
                    unit="ms",
                    width=24,
                    threshold=100,
                ),
            ),
        ),
        RowSpec(
            "Feedback writer",
            (
                PanelSpec(
                    "Feedback events per second",
                    "Events the feedback writer received and wrote to PostgreSQL (by kind) and rejected (by reason); "
                    "impressions the gateway dropped because the writer's buffer was full.",
                    (
                        Query(rate("feedback_events_received_total", "kind"), "received {{kind}}"),
                        Query(rate("feedback_events_written_total", "kind"), "written {{kind}}"),
                        Query(or_zero(rate("feedback_events_rejected_total", "reason")), "rejected {{reason}}"),
                        Query(rate("gateway_impressions_dropped_total"), "impressions dropped by the gateway"),
                    ),
                    unit="ops",
                ),
                PanelSpec(
                    "Write batch duration",
                    "Time to write one batch to PostgreSQL.",
                    quantiles("feedback_write_batch_seconds", "", ""),
                    unit="s",
                ),
                PanelSpec(
                    "Spooled events",
                    "Accepted events waiting in the spool for the database (grows while PostgreSQL is down).",
                    (Query("sum by (instance) (feedback_spool_events)", "{{instance}}"),),
                ),
                PanelSpec(
                    "Database reachable",
                    "1 while every feedback writer reaches PostgreSQL (min of feedback_db_up).",
                    (Query("min(feedback_db_up)", "database up"),),
                    kind="stat",
                    threshold=1,
                ),
            ),
        ),
        RowSpec(
            "Training loop",
            (
                PanelSpec(
                    "Served model age",
                    "Time since the served factor version was published (a retrain or an items cycle that added "
                    "releases), as the loop last saw it. ServedModelStale fires above 24 hours.",
                    (Query("max(recsys_model_age_seconds)", "served model age"),),
                    unit="s",
                    kind="stat",
                    width=6,
                    threshold=LOOP_STALE_S,
                ),
                PanelSpec(
                    "Last cycle succeeded",
                    "1 when the last cycle of a kind (items, retrain) did not fail; LoopLastCycleFailed fires on 0.",
                    (Query("min by (kind) (recsys_loop_last_cycle_ok)", "{{kind}}"),),
                    kind="stat",
                    width=6,
                    threshold=1,
                ),
                PanelSpec(
                    "Loop cycles in the last hour by kind and decision",
                    "Cycles of the training loop over the last hour: promoted, refused, unchanged or failed, for new "
                    "items and for retrains. Every cycle is also a row of retrain_cycles in PostgreSQL.",
                    (Query(f"sum by (kind, decision) (increase({LOOP_CYCLES}[1h]))", "{{kind}} {{decision}}"),),
                ),
                PanelSpec(
                    "Last cycle duration",
                    "Wall time of the last cycle of each kind.",
                    (Query("max by (kind) (recsys_loop_last_cycle_seconds)", "{{kind}}"),),
                    unit="s",
                ),
                PanelSpec(
                    "Items added in the last hour",
                    "New releases the loop's items cycles added to the served catalogue over the last hour.",
                    (Query("sum(increase(recsys_loop_items_added_total[1h]))", "items added"),),
                ),
                PanelSpec(
                    "Organic plays per second",
                    "Organic plays (POST /plays, gRPC Plays) the gateways acknowledged once the writer accepted "
                    "them, and the plays the writer stored in PostgreSQL: what the loop learns from.",
                    (
                        Query(rate("organic_plays_total"), "acknowledged by the gateways"),
                        Query(rate("feedback_events_written_total", selector='{kind="play"}'), "written by the writer"),
                    ),
                    unit="ops",
                ),
            ),
        ),
    ),
)

AB = DashboardSpec(
    uid="recsys-ab",
    title="Recsys / A/B experiment",
    description="Click-through and skips by group, and the sample-ratio screen on impressions.",
    rows=(
        RowSpec(
            "Outcomes",
            (
                PanelSpec(
                    "Click-through rate by group",
                    "Clicks per impression over 5 minutes (recording rule click_through_rate). The A/B report on "
                    "PostgreSQL gives the intervals and the significance.",
                    (Query("click_through_rate", "{{group}}"),),
                    unit="percentunit",
                ),
                PanelSpec(
                    "Skips per impression by group",
                    "Skip feedback per impression, by group.",
                    (Query(per("recommendation_skips_total", IMPRESSIONS, "group"), "{{group}}"),),
                ),
                PanelSpec(
                    "Impressions per second by group",
                    "Recommendations shown, by group.",
                    (Query(rate("recommendation_impressions_total", "group"), "{{group}}"),),
                    unit="ops",
                ),
                PanelSpec(
                    "X-AB-Group header mismatches",
                    "Requests whose X-AB-Group header disagreed with the experiment config (per second).",
                    (Query(rate("ab_group_mismatch_total"), "mismatches"),),
                    unit="reqps",
                ),
            ),
        ),
        RowSpec(
            "Sample ratio",
            (
                PanelSpec(
                    "Impression share against the configured split",
                    "Each group's share of the last hour's impressions, beside the configured share "
                    "(ab_configured_share in the recording rules; keep it equal to the experiment file).",
                    (
                        Query("group:recommendation_impressions:share1h", "observed {{group}}"),
                        Query("ab_configured_share", "configured {{group}}"),
                    ),
                    unit="percentunit",
                ),
                PanelSpec(
                    "Sample-ratio chi-square",
                    "Pearson chi-square of the last hour's impressions per group against the configured split. Above "
                    "10.83 (p < 0.001, 2 groups) with 200+ impressions for 15 minutes, ABSampleRatioMismatch fires. "
                    "Impressions are not independent (users are randomised), so this is a screen; the A/B report's "
                    "user-level check decides.",
                    (Query("ab:sample_ratio_chi2:1h", "chi-square"),),
                    threshold=10.83,
                ),
            ),
        ),
    ),
)

TRITON = DashboardSpec(
    uid="recsys-triton",
    title="Recsys / Triton",
    description="Triton Inference Server per model: latency, queueing, batching, throughput and failures.",
    rows=(
        RowSpec(
            "Latency",
            (
                PanelSpec(
                    "Triton request latency by model",
                    "Quantiles Triton computes over its own recent requests (--metrics-config summary_latencies=true); "
                    "the worst pod and version per model.",
                    tuple(
                        triton_summary("nv_inference_request_summary_us", q, f"p{p} {{{{model}}}}")
                        for q, p in (("0.5", 50), ("0.95", 95), ("0.99", 99))
                    ),
                    unit="ms",
                ),
                PanelSpec(
                    "Mean request and compute time by model",
                    "Per successful request, over the rate window: the whole request in Triton, and running the model "
                    "(an ensemble's compute is the sum of its steps'). Queue time has its own panel.",
                    (
                        Query(
                            mean("nv_inference_request_duration_us", "nv_inference_request_success", "model", US_TO_MS),
                            "request {{model}}",
                        ),
                        Query(
                            mean(
                                "nv_inference_compute_infer_duration_us",
                                "nv_inference_request_success",
                                "model",
                                US_TO_MS,
                            ),
                            "compute {{model}}",
                        ),
                    ),
                    unit="ms",
                ),
            ),
        ),
        RowSpec(
            "Queueing and batching",
            (
                PanelSpec(
                    "Queue time by model",
                    "Time requests wait for a model instance: mean over the rate window and Triton's p99.",
                    (
                        Query(
                            mean("nv_inference_queue_duration_us", "nv_inference_request_success", "model", US_TO_MS),
                            "mean {{model}}",
                        ),
                        triton_summary("nv_inference_queue_summary_us", "0.99", "p99 {{model}}"),
                    ),
                    unit="ms",
                ),
                PanelSpec(
                    "Batch size by model",
                    "Inferences per model execution: how much dynamic batching merges (1 = no batching).",
                    (
                        Query(
                            f"{rate('nv_inference_count', 'model')} / ({rate('nv_inference_exec_count', 'model')} > 0)",
                            "{{model}}",
                        ),
                    ),
                ),
                PanelSpec(
                    "Pending requests by model",
                    "Requests queued or running in Triton right now, summed over pods.",
                    (Query("sum by (model) (nv_inference_pending_request_count)", "{{model}}"),),
                ),
                PanelSpec(
                    "Inferences and executions per second by model",
                    "Inferences (batch items) and model executions per second.",
                    (
                        Query(rate("nv_inference_count", "model"), "inferences {{model}}"),
                        Query(rate("nv_inference_exec_count", "model"), "executions {{model}}"),
                    ),
                    unit="ops",
                ),
            ),
        ),
        RowSpec(
            "Outcomes",
            (
                PanelSpec(
                    "Successful requests per second by model",
                    "Requests Triton answered without error.",
                    (Query(rate("nv_inference_request_success", "model"), "{{model}}"),),
                    unit="reqps",
                ),
                PanelSpec(
                    "Failed requests per second by model and reason",
                    "Requests Triton failed, by model and Triton's failure reason.",
                    (Query(rate("nv_inference_request_failure", "model, reason"), "{{model}} {{reason}}"),),
                    unit="reqps",
                ),
            ),
        ),
    ),
)

RESOURCES = DashboardSpec(
    uid="recsys-resources",
    title="Recsys / Resources",
    description="CPU and memory per pod (process metrics of the gateway and feedback writer; Triton's node).",
    rows=(
        RowSpec(
            "Processes",
            (
                PanelSpec(
                    "CPU per pod",
                    "CPU cores used by each gateway and feedback-writer process (process_cpu_seconds_total).",
                    (Query(rate("process_cpu_seconds_total", "job, instance, pod"), "{{job}} {{instance}} {{pod}}"),),
                    unit="short",
                ),
                PanelSpec(
                    "Resident memory per pod",
                    "Resident set size of each gateway and feedback-writer process.",
                    (
                        Query(
                            "sum by (job, instance, pod) (process_resident_memory_bytes)",
                            "{{job}} {{instance}} {{pod}}",
                        ),
                    ),
                    unit="bytes",
                ),
            ),
        ),
        RowSpec(
            "Triton node",
            (
                PanelSpec(
                    "Triton node CPU utilization",
                    "CPU use of the machine each Triton runs on, as Triton reports it (nv_cpu_utilization). Triton "
                    "exports no process metrics of its own.",
                    (Query("max by (instance, pod) (nv_cpu_utilization)", "{{instance}} {{pod}}"),),
                    unit="percentunit",
                ),
                PanelSpec(
                    "Triton node memory used",
                    "Memory in use on the machine each Triton runs on (nv_cpu_memory_used_bytes).",
                    (Query("max by (instance, pod) (nv_cpu_memory_used_bytes)", "{{instance}} {{pod}}"),),
                    unit="bytes",
                ),
            ),
        ),
        RowSpec(
            "Targets",
            (
                PanelSpec(
                    "Scrape targets up",
                    "1 while Prometheus scrapes the target; 0 when it is down (Triton down alerts after 1 minute).",
                    (Query("up", "{{job}} {{instance}}"),),
                    width=24,
                ),
            ),
        ),
    ),
)

DASHBOARDS: tuple[DashboardSpec, ...] = (SERVICE, AB, TRITON, RESOURCES)


def _thresholds(threshold: float | None) -> dashboard_builders.ThresholdsConfig:
    steps = [dashboard.Threshold(value=None, color="green")]
    if threshold is not None:
        steps.append(dashboard.Threshold(value=threshold, color="red"))
    return dashboard_builders.ThresholdsConfig().mode(dashboard.ThresholdsMode.ABSOLUTE).steps(steps)


def _panel(spec: PanelSpec, panel_id: int) -> timeseries.Panel | stat.Panel:
    builder: timeseries.Panel | stat.Panel
    if spec.kind == "stat":
        builder = stat.Panel()
    else:
        builder = (
            timeseries.Panel()
            .legend(
                common_builders.VizLegendOptions()
                .display_mode(common.LegendDisplayMode.LIST)
                .placement(common.LegendPlacement.BOTTOM)
                .show_legend(True)
            )
            .min(0)
        )
        if spec.threshold is not None:
            builder = builder.thresholds_style(
                common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE)
            )
    builder = (
        builder.id(panel_id)
        .title(spec.title)
        .description(spec.description)
        .datasource(DATASOURCE)
        .unit(spec.unit)
        .thresholds(_thresholds(spec.threshold))
        .height(spec.height)
        .span(spec.width)
    )
    for index, query in enumerate(spec.queries):
        builder = builder.with_target(
            prometheus.Dataquery()
            .ref_id(chr(ord("A") + index))
            .datasource(DATASOURCE)
            .expr(query.expr)
            .legend_format(query.legend or "__auto")
        )
    return builder


def build(spec: DashboardSpec) -> dashboard.Dashboard:
    """The Grafana dashboard model of one spec (panel ids numbered from 1 in layout order, rows included)."""
    builder = (
        dashboard_builders.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(TAGS)
        .editable()
        .refresh("30s")
        .time("now-1h", "now")
        .timezone(common.TimeZoneBrowser)
    )
    panel_id = 0
    for row in spec.rows:
        panel_id += 1
        builder = builder.with_row(dashboard_builders.Row(row.title).id(panel_id).datasource(DATASOURCE))
        for panel in row.panels:
            panel_id += 1
            builder = builder.with_panel(_panel(panel, panel_id))
    return builder.build()


def render(spec: DashboardSpec) -> str:
    """The dashboard as the JSON text committed under ``grafana/dashboards`` (sorted keys, trailing newline)."""
    return JSONEncoder(sort_keys=True, indent=2).encode(build(spec)) + "\n"


def write(out_dir: Path = DASHBOARDS_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in DASHBOARDS:
        path = out_dir / spec.filename
        path.write_text(render(spec))
        paths.append(path)
    return paths


def stale(out_dir: Path = DASHBOARDS_DIR) -> list[str]:
    """Names of committed dashboard files that differ from the generated ones, are missing, or are not generated."""
    expected = {spec.filename: render(spec) for spec in DASHBOARDS}
    present = {path.name for path in out_dir.glob("*.json")}
    differ = [name for name, text in expected.items() if name not in present or (out_dir / name).read_text() != text]
    return sorted(differ + sorted(present - expected.keys()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate (or --check) grafana/dashboards/*.json.")
    parser.add_argument("--out", type=Path, default=DASHBOARDS_DIR)
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed dashboard is not current")
    args = parser.parse_args(argv)
    if args.check:
        differ = stale(args.out)
        for name in differ:
            print(f"stale: {args.out / name}", file=sys.stderr)
        return 1 if differ else 0
    for path in write(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
