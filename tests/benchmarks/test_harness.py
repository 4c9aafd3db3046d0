"""The benchmark harness's pure parts: tables from rows, perf_analyzer's tables, wrk's output, arguments."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from benchmarks.harness.perf_analyzer import (
    PERCENTILE_HEADER,
    ModelServerStats,
    PerfAnalyzerError,
    PerfRow,
    PerfRun,
    percentile_rows,
    step_rows,
)
from benchmarks.harness.running import int_list, summarize
from benchmarks.harness.tables import Column, fmt, markdown_table, table, write_results
from benchmarks.harness.wrk import WrkError, duration_ms, parse_wrk
from recsys.core.errors import RecsysError

WRK_OUTPUT = """Running 5s test @ http://127.0.0.1:8088
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    12.31ms    4.20ms  80.11ms   90.00%
  Latency Distribution
     50%   11.50ms
     75%   13.20ms
     90%   16.00ms
     99%    1.02s
  6400 requests in 5.00s, 3.10MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:   1280.00
Transfer/sec:    634.00KB
"""


def perf_row(concurrency: int, server: tuple[ModelServerStats, ...] = ()) -> PerfRow:
    return PerfRow(
        concurrency=concurrency,
        throughput=1234.4,
        p50_ms=1.0,
        p90_ms=2.0,
        p95_ms=3.0,
        p99_ms=4.0,
        avg_ms=None,
        client_send_ms=None,
        network_server_ms=None,
        server_queue_ms=0.1,
        server_compute_input_ms=None,
        server_compute_infer_ms=0.5,
        server_compute_output_ms=None,
        client_recv_ms=None,
        server=server,
    )


def test_markdown_table_and_columns() -> None:
    assert markdown_table(["a", "b"], [[1, "x"]]) == "| a | b |\n|---|---|\n| 1 | x |"
    assert markdown_table(["a"], [["x | y"]]).endswith("| x \\| y |")
    columns = [Column[tuple[str, float]]("name", lambda r: r[0]), Column("value", lambda r: fmt(r[1], 1))]
    assert table(columns, [("x", 1234.56)]) == "| name | value |\n|---|---|\n| x | 1,234.6 |"
    assert fmt(None) == "-"


def test_write_results_writes_markdown_and_json(tmp_path: Path) -> None:
    md, js = write_results(tmp_path / "out", "stem", "# hi\n", {"a": 1})
    assert md.read_text() == "# hi\n"
    assert json.loads(js.read_text()) == {"a": 1}


def test_percentile_and_step_rows() -> None:
    steps = (
        ModelServerStats("recsys_a", 10, 10, 1.5, {"compute": 1.0}),
        ModelServerStats("recsys_lookup", 10, 5, 0.4, {"queue": 0.1, "compute_infer": 0.2}),
    )
    run = PerfRun("recsys_a", "grpc", "u", (perf_row(1, steps),), {4: "exit 1: boom"}, (), 1.0)
    rows = percentile_rows([run])
    assert rows[0] == ["`recsys_a`", "1", "1,234", "1.00", "2.00", "3.00", "4.00", "-", "0.10", "0.50"]
    assert rows[1] == ["`recsys_a`", "4", "failed", "exit 1: boom", "", "", "", "", "", ""]
    assert all(len(row) == 2 + len(PERCENTILE_HEADER) + 2 for row in rows)
    labelled = percentile_rows([run], lambda r: [f"`{r.model}`", "A"])
    assert labelled[0][:3] == ["`recsys_a`", "A", "1"]
    assert step_rows([run], parts=("queue", "compute_infer")) == [
        ["`recsys_a`", "1", "`recsys_lookup`", "0.40", "0.10", "0.20", "2.00"]
    ]


def test_wrk_output_is_read() -> None:
    result = parse_wrk(WRK_OUTPUT)
    assert result.rps == 1280.0
    assert result.requests == 6400
    assert result.p50_ms == 11.5
    assert result.p99_ms == 1020.0
    assert result.errors == 7
    assert duration_ms("850.00us") == pytest.approx(0.85)
    with pytest.raises(WrkError, match="unexpected wrk output"):
        parse_wrk("nothing")


def test_arguments_and_summaries() -> None:
    assert int_list("1,4, 16") == [1, 4, 16]
    with pytest.raises(argparse.ArgumentTypeError):
        int_list("0")
    floor = summarize("x", [0.001, 0.003, 0.002])
    assert floor.p50_ms == pytest.approx(2.0)
    assert floor.queries == 3


def test_harness_errors_are_recsys_errors() -> None:
    assert issubclass(PerfAnalyzerError, RecsysError)
    assert issubclass(WrkError, RecsysError)
