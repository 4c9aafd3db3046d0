"""Triton's ``perf_analyzer`` from Python: find or install it, run it, and read its results into typed rows.

The binary is the one inside the ``tritonclient==2.51.0`` wheel (newer builds need GLIBC 2.38), unpacked by
``benchmarks/install_perf_analyzer.sh`` into ``.cache/tools/perf_analyzer/`` (git-ignored) and never installed
into the venv. It runs with ``LD_LIBRARY_PATH`` = that folder's ``lib/`` (links to two libraries of
nvidia-pytriton).

One :func:`run_perf_analyzer` call measures one model at one or more concurrency levels, each level in its own
``perf_analyzer`` process (its ``--concurrency-range`` only steps linearly, and one process per level keeps a
failure at one level from losing the others). From each process it keeps:

* the ``-f`` CSV (``--verbose-csv``): throughput, p50/p90/p95/p99 and average client latency, and the server's
  averages per request (queue, compute input/infer/output; for an ensemble these add up its steps);
* the text report's per-model server breakdown: for an ensemble one entry per composing model, with its
  inference and execution counts (their ratio is the mean dynamic batch) and queue/compute times.

Latencies come from perf_analyzer in microseconds and are stored here in milliseconds.

Also here: the tables every perf_analyzer benchmark prints (percentiles per model and level, the steps of an
ensemble).
"""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from benchmarks.harness.facts import REPO_ROOT
from benchmarks.harness.tables import fmt
from recsys.core.errors import RecsysError

PERF_ANALYZER_VERSION = "2.51.0"
DEFAULT_TOOLS_DIR = REPO_ROOT / ".cache" / "tools" / "perf_analyzer"
INSTALL_SCRIPT = REPO_ROOT / "benchmarks" / "install_perf_analyzer.sh"

__all__ = [
    "PERCENTILE_HEADER",
    "Measurement",
    "ModelServerStats",
    "PerfAnalyzer",
    "PerfAnalyzerError",
    "PerfRow",
    "PerfRun",
    "find_perf_analyzer",
    "parse_csv",
    "parse_server_stats",
    "percentile_rows",
    "run_perf_analyzer",
    "step_rows",
]

WireProtocol = Literal["grpc", "http"]
MeasurementMode = Literal["count_windows", "time_windows"]


class PerfAnalyzerError(RecsysError):
    """perf_analyzer is missing, does not start, or a run produced no result."""


# ------------------------------------------------------------------------------------------------ locating


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: Path
    lib_dir: Path

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(self.lib_dir), env.get("LD_LIBRARY_PATH", "")) if p)
        return env

    def version(self) -> str:
        done = subprocess.run(
            [str(self.binary), "--version"], env=self.env(), capture_output=True, text=True, timeout=30, check=False
        )
        match = re.search(r"Perf Analyzer Version (\S+)", done.stdout + done.stderr)
        if done.returncode != 0 or match is None:
            raise PerfAnalyzerError(f"{self.binary} does not start: {(done.stdout + done.stderr).strip()[-500:]}")
        return match.group(1)


def find_perf_analyzer(tools_dir: Path = DEFAULT_TOOLS_DIR, *, install: bool = True) -> PerfAnalyzer:
    """The perf_analyzer of ``tools_dir``; runs ``install_perf_analyzer.sh`` first when it is missing and
    ``install`` is true (a download of one wheel from PyPI, once)."""
    found = PerfAnalyzer(binary=tools_dir / "bin" / "perf_analyzer", lib_dir=tools_dir / "lib")
    if not (found.binary.is_file() and (found.lib_dir / "libb64.so.0d").exists()):
        if not install:
            raise PerfAnalyzerError(f"no perf_analyzer in {tools_dir}: run {INSTALL_SCRIPT.relative_to(REPO_ROOT)}")
        env = dict(os.environ, TOOLS_DIR=str(tools_dir), PYTHON=sys.executable)
        done = subprocess.run(["bash", str(INSTALL_SCRIPT)], env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise PerfAnalyzerError(f"{INSTALL_SCRIPT.name} failed: {(done.stdout + done.stderr).strip()[-1500:]}")
    found.version()
    return found


# ------------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class ModelServerStats:
    """Server-side averages of one model over a measurement (from perf_analyzer's text report), in ms."""

    model: str
    inference_count: int
    execution_count: int
    avg_request_ms: float
    #: overhead, queue, compute_input, compute_infer, compute_output (or compute, for an ensemble's own line)
    parts_ms: dict[str, float]

    @property
    def mean_batch(self) -> float | None:
        return self.inference_count / self.execution_count if self.execution_count else None


@dataclass(frozen=True)
class PerfRow:
    """One concurrency level of one model."""

    concurrency: int
    throughput: float  # inferences per second
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    avg_ms: float | None
    client_send_ms: float | None
    network_server_ms: float | None  # "Network+Server Send/Recv"
    server_queue_ms: float | None
    server_compute_input_ms: float | None
    server_compute_infer_ms: float | None
    server_compute_output_ms: float | None
    client_recv_ms: float | None
    #: the model's own server line first, then (ensembles) each composing model
    server: tuple[ModelServerStats, ...] = ()
    raw_csv: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PerfRun:
    model: str
    protocol: WireProtocol
    url: str
    rows: tuple[PerfRow, ...]
    #: concurrency -> why it has no row (perf_analyzer failed or timed out)
    failures: dict[int, str]
    commands: tuple[tuple[str, ...], ...]
    seconds: float

    def row(self, concurrency: int) -> PerfRow | None:
        return next((r for r in self.rows if r.concurrency == concurrency), None)

    def to_json(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["failures"] = {str(k): v for k, v in self.failures.items()}
        return payload


@dataclass(frozen=True)
class Measurement:
    """How perf_analyzer decides a measurement is done; the defaults are the stable settings for this machine."""

    mode: MeasurementMode = "count_windows"
    request_count: int = 1000  # count_windows: requests per window
    interval_ms: int = 5000  # time_windows: window length
    stability_percentage: float = 25.0
    max_trials: int = 10

    def args(self) -> list[str]:
        args = ["--measurement-mode", self.mode]
        if self.mode == "count_windows":
            args += ["--measurement-request-count", str(self.request_count)]
        else:
            args += ["--measurement-interval", str(self.interval_ms)]
        return [*args, "--stability-percentage", f"{self.stability_percentage:g}", "--max-trials", str(self.max_trials)]


def _ms(value: str | None) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        return float(value) / 1000.0
    except ValueError:
        return None


def parse_csv(text: str) -> list[PerfRow]:
    """Rows of perf_analyzer's ``-f`` CSV (plain or ``--verbose-csv``); microseconds become milliseconds."""
    rows = []
    for record in csv.DictReader(io.StringIO(text)):
        if not record.get("Concurrency") or not record.get("Inferences/Second"):
            continue
        p50, p90, p95, p99 = (
            _ms(record.get(f"p{q} latency")) for q in (50, 90, 95, 99)
        )  # always present in 2.51's CSV
        if p50 is None or p90 is None or p95 is None or p99 is None:
            raise PerfAnalyzerError(f"perf_analyzer CSV lacks latency percentiles: {sorted(record)}")
        rows.append(
            PerfRow(
                concurrency=int(float(record["Concurrency"])),
                throughput=float(record["Inferences/Second"]),
                p50_ms=p50,
                p90_ms=p90,
                p95_ms=p95,
                p99_ms=p99,
                avg_ms=_ms(record.get("Avg latency")),
                client_send_ms=_ms(record.get("Client Send")),
                network_server_ms=_ms(record.get("Network+Server Send/Recv")),
                server_queue_ms=_ms(record.get("Server Queue")),
                server_compute_input_ms=_ms(record.get("Server Compute Input")),
                server_compute_infer_ms=_ms(record.get("Server Compute Infer")),
                server_compute_output_ms=_ms(record.get("Server Compute Output")),
                client_recv_ms=_ms(record.get("Client Recv")),
                raw_csv={k: v for k, v in record.items() if k},
            )
        )
    return rows


_CONCURRENCY = re.compile(r"^Request concurrency: (\d+)\s*$")
_COMPOSING_MODEL = re.compile(r"^\s+(\S+), version: (\S+)\s*$")
_COUNT = re.compile(r"^\s+(Inference|Execution) count: (\d+)\s*$")
_AVG_REQUEST = re.compile(r"^\s+Avg request latency: (\d+(?:\.\d+)?) usec \((.*)\)\s*$")
_PART = re.compile(r"([a-z][a-z ]*?) (\d+(?:\.\d+)?) usec")


def parse_server_stats(text: str, model: str) -> dict[int, tuple[ModelServerStats, ...]]:
    """Per concurrency level, the server lines of perf_analyzer's text report: ``model``'s own, then those of
    its composing models (ensembles)."""
    out: dict[int, list[ModelServerStats]] = {}
    level: int | None = None
    current = model
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if match := _CONCURRENCY.match(line):
            level, current, counts = int(match.group(1)), model, {}
            out[level] = []
        elif level is None:
            continue
        elif line.strip() == "Server:":
            current, counts = model, {}
        elif match := _COMPOSING_MODEL.match(line):
            current, counts = match.group(1), {}
        elif match := _COUNT.match(line):
            counts[match.group(1)] = int(match.group(2))
        elif match := _AVG_REQUEST.match(line):
            parts = {name.strip().replace(" ", "_"): float(us) / 1000.0 for name, us in _PART.findall(match.group(2))}
            out[level].append(
                ModelServerStats(
                    model=current,
                    inference_count=counts.get("Inference", 0),
                    execution_count=counts.get("Execution", 0),
                    avg_request_ms=float(match.group(1)) / 1000.0,
                    parts_ms=parts,
                )
            )
    return {k: tuple(v) for k, v in out.items()}


# ------------------------------------------------------------------------------------------------ running


def run_perf_analyzer(
    analyzer: PerfAnalyzer,
    model: str,
    url: str,
    *,
    concurrency: Sequence[int],
    work_dir: Path,
    input_data: Path | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    protocol: WireProtocol = "grpc",
    measurement: Measurement | None = None,
    timeout_s: float = 600.0,
    metrics_url: str | None = None,
    extra_args: Sequence[str] = (),
    log: Any = None,
) -> PerfRun:
    """Measures ``model`` at each ``concurrency`` level (one perf_analyzer process each, synchronous requests,
    batch size 1). ``input_data`` is perf_analyzer's ``--input-data`` JSON; ``metrics_url`` adds
    ``--collect-metrics`` (GPU utilisation/memory columns, only filled on a GPU server). ``log`` (a callable taking
    a string) receives one line per level. Each level's CSV and text report stay in ``work_dir``."""
    measurement = measurement or Measurement()
    work_dir.mkdir(parents=True, exist_ok=True)
    rows: list[PerfRow] = []
    failures: dict[int, str] = {}
    commands: list[tuple[str, ...]] = []
    began = time.perf_counter()
    for level in concurrency:
        stem = f"{model}-{protocol}-c{level}"
        csv_path = work_dir / f"{stem}.csv"
        csv_path.unlink(missing_ok=True)
        command = [
            str(analyzer.binary),
            "-m",
            model,
            "-u",
            url,
            "-i",
            protocol,
            "-b",
            "1",
            "--concurrency-range",
            f"{level}:{level}",
            *measurement.args(),
            "-f",
            str(csv_path),
            "--verbose-csv",
        ]
        if input_data is not None:
            command += ["--input-data", str(input_data)]
        for name, dims in (shapes or {}).items():
            command += ["--shape", f"{name}:{','.join(str(d) for d in dims)}"]
        if metrics_url is not None:
            command += ["--collect-metrics", "--metrics-url", metrics_url]
        command += list(extra_args)
        commands.append(tuple(command))
        try:
            done = subprocess.run(
                command, env=analyzer.env(), capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as exc:
            failures[level] = f"timed out after {timeout_s:g} s"
            partial = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            (work_dir / f"{stem}.txt").write_text(partial)
            if log is not None:
                log(f"  {model} c={level}: {failures[level]}")
            continue
        report = done.stdout + ("\n--- stderr ---\n" + done.stderr if done.stderr.strip() else "")
        (work_dir / f"{stem}.txt").write_text(report)
        parsed = parse_csv(csv_path.read_text()) if csv_path.is_file() else []
        row = next((r for r in parsed if r.concurrency == level), None)
        if done.returncode != 0 or row is None:
            tail = " | ".join(line.strip() for line in report.strip().splitlines()[-4:])
            failures[level] = f"exit {done.returncode}: {tail[-600:]}"
            if log is not None:
                log(f"  {model} c={level}: FAILED ({failures[level]})")
            continue
        server = parse_server_stats(done.stdout, model).get(level, ())
        row = replace(row, server=server)
        rows.append(row)
        if log is not None:
            log(f"  {model} c={level}: {row.throughput:,.0f} infer/s, p50 {row.p50_ms:.2f} ms, p99 {row.p99_ms:.2f} ms")
    return PerfRun(
        model=model,
        protocol=protocol,
        url=url,
        rows=tuple(rows),
        failures=failures,
        commands=tuple(commands),
        seconds=time.perf_counter() - began,
    )


# ------------------------------------------------------------------------------------------------ tables

#: the figures :func:`percentile_rows` writes after the label and concurrency cells (then queue and infer)
PERCENTILE_HEADER = ("infer/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "avg ms")


def percentile_rows(
    runs: Sequence[PerfRun], label: Callable[[PerfRun], Sequence[str]] | None = None
) -> list[list[str]]:
    """One row per model and level: the label cells (default: the model), c, :data:`PERCENTILE_HEADER`, the
    server's queue and compute-infer averages; a failed level gets ``failed`` and its reason."""
    rows = []
    for run in runs:
        lead = list(label(run)) if label is not None else [f"`{run.model}`"]
        rows += [
            [
                *lead,
                str(row.concurrency),
                fmt(row.throughput, 0),
                *(fmt(v) for v in (row.p50_ms, row.p90_ms, row.p95_ms, row.p99_ms, row.avg_ms)),
                fmt(row.server_queue_ms),
                fmt(row.server_compute_infer_ms),
            ]
            for row in run.rows
        ]
        rows += [[*lead, str(level), "failed", why[:80], *[""] * 6] for level, why in run.failures.items()]
    return rows


def step_rows(
    runs: Sequence[PerfRun], parts: Sequence[str] = ("queue", "compute_input", "compute_infer", "compute_output")
) -> list[list[str]]:
    """Per ensemble, level and composing model: its average request, the ``parts`` and the mean dynamic batch."""
    return [
        [
            f"`{run.model}`",
            str(row.concurrency),
            f"`{stats.model}`",
            fmt(stats.avg_request_ms),
            *(fmt(stats.parts_ms.get(part)) for part in parts),
            fmt(stats.mean_batch),
        ]
        for run in runs
        for row in run.rows
        for stats in row.server[1:]
    ]
