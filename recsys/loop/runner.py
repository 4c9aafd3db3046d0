"""``recsys retrain``: one cycle, or the loop on a schedule (retrain every ``--every``, new items every
``--items-every``), each cycle recorded; a failing cycle is recorded and the loop goes on, the served version left
alone. ``--metrics-port`` exports the loop's state to Prometheus (no global registry: one per loop)."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from recsys.core.errors import ConfigError, RecsysError
from recsys.loop.canary import CanaryPlan, busy, canary_cycle, ensure_canary
from recsys.loop.items import refresh_items
from recsys.loop.records import Cycle, RecordError, record
from recsys.loop.retrain import RetrainOptions, retrain_cycle
from trainer.new_items import CatalogueRules
from trainer.triton.family import FACTOR
from trainer.triton.repository import ModelControl, manifest, versions

log = logging.getLogger(__name__)

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``30s``, ``15m``, ``1.5h``, ``1d`` -> a positive timedelta (one-line ConfigError otherwise)."""
    match = _DURATION.match(text.strip())
    if not match or float(match[1]) <= 0:
        raise ConfigError(f"{text!r} is not a duration like 30s, 15m, 1h or 1d")
    return timedelta(seconds=float(match[1]) * _UNIT[match[2]])


@dataclass(frozen=True)
class Plan:
    every: timedelta | None = None  # retrain cadence; None: one cycle and stop
    items_every: timedelta | None = None  # new-items cadence between retrains; None: with each retrain only
    items_only: bool = False  # refresh new items, never retrain


class LoopMetrics:
    """The loop's state for Prometheus: what ran, what it decided, how long it took, how old the served model is."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.cycles = Counter(
            "recsys_loop_cycles", "Loop cycles by kind and decision", ["kind", "decision"], registry=self.registry
        )
        self.duration = Gauge(
            "recsys_loop_last_cycle_seconds", "Duration of the last cycle", ["kind"], registry=self.registry
        )
        self.last_ok = Gauge(
            "recsys_loop_last_cycle_ok",
            "1 when the last cycle of a kind did not fail",
            ["kind"],
            registry=self.registry,
        )
        self.items = Counter("recsys_loop_items_added", "Items added to the catalogue", registry=self.registry)
        self.age = Gauge(
            "recsys_model_age_seconds", "Age of the served factor version (since its publish)", registry=self.registry
        )

    def observe(self, cycle: Cycle) -> None:
        self.cycles.labels(cycle.kind, cycle.decision).inc()
        self.duration.labels(cycle.kind).set(cycle.seconds)
        self.last_ok.labels(cycle.kind).set(0 if cycle.decision == "failed" else 1)
        self.items.inc(cycle.items_added)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        start_http_server(port, addr=addr, registry=self.registry)


def model_age_s(repository: Path) -> float | None:
    available = versions(repository, FACTOR)
    if not available:
        return None
    published = manifest(repository, FACTOR, available[-1]).get("published_at")
    if not published:
        return None
    return (datetime.now(UTC) - datetime.fromisoformat(str(published))).total_seconds()


def _guarded(kind: str, work: Callable[[], Cycle]) -> Cycle:
    """A cycle that raised becomes a ``failed`` cycle: the loop records it and goes on."""
    started = datetime.now(UTC)
    try:
        return work()
    except RecsysError as exc:
        reason = str(exc)
    except Exception as exc:  # a bug must not end the loop; it is logged with its traceback and recorded
        log.exception("%s cycle failed", kind)
        reason = f"{type(exc).__name__}: {exc}"
    return Cycle(kind=kind, started=started, finished=datetime.now(UTC), decision="failed", reason=reason)  # type: ignore[arg-type]


def run_loop(
    repository: Path,
    dsn: str,
    control: ModelControl,
    workdir: Path,
    plan: Plan,
    *,
    options: RetrainOptions | None = None,
    rules: CatalogueRules | None = None,
    stop: threading.Event | None = None,
    on_cycle: Callable[[Cycle], None] | None = None,
    metrics: LoopMetrics | None = None,
    canary: CanaryPlan | None = None,
) -> list[Cycle]:
    """Runs the plan until ``stop`` is set (or once, without ``plan.every``); returns the cycles it ran.

    With ``canary``, a retrain that passes the gate serves the canary group only; each retrain slot first judges
    a running candidate (promote, withdraw or wait) and trains a new one only when the canary is free."""
    stop = stop or threading.Event()
    done: list[Cycle] = []

    def step(kind: str, work: Callable[[], Cycle]) -> None:
        cycle = _guarded(kind, work)
        try:
            record(dsn, cycle)
        except RecordError as exc:
            log.warning("%s", exc)
        if metrics is not None:
            metrics.observe(cycle)
            age = model_age_s(repository)
            if age is not None:
                metrics.age.set(age)
        done.append(cycle)
        if on_cycle is not None:
            on_cycle(cycle)

    ann = options.ann if options is not None else None  # every publish of the loop builds and gates by it

    def items() -> Cycle:
        return refresh_items(repository, dsn, control, workdir, rules=rules, ann=ann)

    def retrain() -> Cycle:
        return retrain_cycle(repository, dsn, control, workdir, options)

    if canary is not None:
        options = dataclasses.replace(options or RetrainOptions(), canary=True)
        ensure_canary(repository, control, ann=ann)

    items_every = plan.items_every or plan.every
    retrain_every = None if plan.items_only else plan.every
    next_items = time.monotonic()
    next_retrain = math.inf if plan.items_only else time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if now >= next_items:
            step("items", items)
            next_items = now + items_every.total_seconds() if items_every else math.inf
        if now >= next_retrain:
            if canary is not None:
                step("canary", functools.partial(canary_cycle, repository, dsn, control, canary, ann=ann))
            if canary is None or not busy(repository):
                step("retrain", retrain)
            next_retrain = now + retrain_every.total_seconds() if retrain_every else math.inf
        upcoming = min(next_items, next_retrain)
        if math.isinf(upcoming):
            break
        stop.wait(max(upcoming - time.monotonic(), 0.0))
    return done
