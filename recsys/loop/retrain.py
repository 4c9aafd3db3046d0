"""One gated retraining cycle: read the log -> warm-train -> gate -> publish -> hot swap, recorded either way.

1. The served version's run is the base: its factors start the fit and its history is merged in, so the log is
   read only since the base's own data ended (``metrics.json`` ``log.until``), never twice.
2. The newest ``window`` of the log is held out by time. A candidate warm-trained on everything before it is
   compared with the served model on it (:func:`trainer.gate.gate`); a candidate worse beyond the tolerance, with
   NaN weights, or without enough listeners to judge is refused, and the served version keeps answering.
3. A candidate that passes is trained once more the same way on everything, window included (validate, then
   refit: the window's plays, new releases among them, are what the next hour's listeners want), exported with
   the parity check and hot-swapped in (ensembles pinned: no request fails during the swap).

Every outcome, ``failed`` included, is one row of ``retrain_cycles``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from recsys.core.errors import ConfigError, DataError, RecsysError
from recsys.loop.records import Cycle, Decision
from trainer.ann import AnnPolicy
from trainer.artifacts import Run, load_run, save_run
from trainer.data.interactions import Interactions
from trainer.data.log import LogData, load_log
from trainer.exporting import ExportError
from trainer.gate import Ranker, Window, as_strings, gate
from trainer.models.base import Recommender
from trainer.new_items import CatalogueRules, enforce
from trainer.triton.family import FACTOR, Family
from trainer.triton.publish import publish
from trainer.triton.repository import ModelControl, activate, served_run, versions, withdraw
from trainer.warm import default_fraction, warm_start

log = logging.getLogger(__name__)

CANARY_SUFFIX = "_canary"  # the canary family's names (recsys.loop.canary)

PASSES = {"als": "iterations", "bpr": "epochs"}  # what a warm start shortens


@dataclass(frozen=True)
class RetrainOptions:
    window: timedelta = timedelta(minutes=15)  # the newest events, held out for the gate
    tolerance: float = 0.02  # the candidate may be this much (relative NDCG@10) below the served model
    min_users: int = 20  # listeners with new plays in the window needed to judge
    decay_days: float | None = None  # half-life of the log's weights (None: no decay)
    iterations: int | None = None  # warm iterations / epochs (None: the warm start's share of the cold run's)
    params: Mapping[str, Any] | None = None  # hyperparameters over the cold run's (the factor count must stay)
    canary: bool = False  # a candidate that passes serves the canary group only (recsys.loop.canary)
    rules: CatalogueRules = field(default_factory=CatalogueRules)  # the spam rule, for items the run does not know
    #: the approximate index's policy and gate for the loop's publishes (``RECSYS_ANN_*``: the CLI passes
    #: ``AnnPolicy.from_settings``); None: the lineage's kind with the default threshold and gate
    ann: AnnPolicy | None = None

    def __post_init__(self) -> None:
        if self.window <= timedelta(0):
            raise ConfigError(f"the gate window must be positive, got {self.window}")
        if self.min_users < 1:
            raise ConfigError(f"min_users must be >= 1, got {self.min_users}")


def window_of(newest: LogData) -> Window:
    """The held-out events as external ids: every (listener, item) played, every skip."""
    data = newest.interactions
    return Window(
        users=as_strings(data.user_ids.external(data.users)),
        items=as_strings(data.item_ids.external(data.items)),
        skip_users=as_strings(newest.skips.user_ids),
        skip_items=as_strings(newest.skips.item_ids),
    )


def warm_params(base: Run, options: RetrainOptions) -> dict[str, Any]:
    """The cold run's parameters (kept in every cycle's metrics) with the warm share of its passes: scaling the
    previous cycle's own, already reduced, passes again would shrink them cycle after cycle."""
    params = dict(base.metrics.get("params") or base.model.params.to_dict()) | dict(options.params or {})
    passes = PASSES[base.model.name]
    params[passes] = options.iterations or max(1, round(int(params[passes]) * default_fraction(base.model.name)))
    return params


def _since(base: Run) -> datetime | None:
    until = (base.metrics.get("log") or {}).get("until")
    return None if until is None else datetime.fromisoformat(str(until))


def _ranker(model: Recommender, data: Interactions) -> Ranker:
    return Ranker(model, data.user_ids, data.item_ids, data.to_csr())


def retrain_cycle(
    repository: Path,
    dsn: str,
    control: ModelControl,
    workdir: Path,
    options: RetrainOptions | None = None,
    *,
    family: Family = FACTOR,
    now: datetime | None = None,
) -> Cycle:
    """One cycle for ``family`` (see the module docstring); never raises for a refused or failed cycle: the
    returned :class:`Cycle` says what happened and why."""
    options = options or RetrainOptions()
    started = now or datetime.now(UTC)
    durations: dict[str, float] = {}
    served, run_dir = served_run(repository, family)
    base = load_run(run_dir)
    since, window_start = _since(base), started - options.window
    fields: dict[str, Any] = {"served_version": served, "data_since": since, "data_until": started}

    def done(decision: Decision, reason: str, **more: Any) -> Cycle:
        log.info("retrain %s: %s", decision, reason)
        return Cycle(
            kind="retrain", started=started, finished=datetime.now(UTC), decision=decision, reason=reason,
            durations=durations, **(fields | more),
        )  # fmt: skip

    if since is not None and since >= window_start:
        return done(
            "unchanged",
            f"the served run's data ends at {since.isoformat(timespec='seconds')}, inside the gate window: retrain "
            f"less often than the window ({options.window}) so that each candidate has new data to learn from",
        )
    clock = time.perf_counter()
    try:
        before = load_log(dsn, since=since, until=window_start, decay_days=options.decay_days, base=base)
        newest = load_log(dsn, since=window_start, until=started)
    except DataError as exc:
        return done("refused", f"nothing to gate on: {exc}")
    except RecsysError as exc:
        return done("failed", f"the log is not readable: {exc}")
    durations["read_s"] = round(time.perf_counter() - clock, 3)

    clock = time.perf_counter()
    known = base.item_ids.ids.astype(str).tolist()
    candidate_data = enforce(before.interactions, known, options.rules)
    candidate = warm_start(base, candidate_data, params=warm_params(base, options)).model
    durations["train_s"] = round(time.perf_counter() - clock, 3)
    report = gate(
        Ranker(base.model, base.user_ids, base.item_ids, base.history),
        _ranker(candidate, candidate_data),
        window_of(newest),
        tolerance=options.tolerance,
        min_users=options.min_users,
    )
    fields["gate"] = report.as_dict()
    if not report.passed:
        return done("refused", report.reason)

    clock = time.perf_counter()
    everything = load_log(dsn, since=since, until=started, decay_days=options.decay_days, base=base)
    final_data = enforce(everything.interactions, known, options.rules)
    warm = warm_start(base, final_data, params=warm_params(base, options))
    final = warm.model
    durations["refit_s"] = round(time.perf_counter() - clock, 3)
    out = workdir / f"cycle-{started:%Y%m%dT%H%M%S%f}"
    metrics = {
        **{k: v for k, v in base.metrics.items() if k in ("params", "split", "seed")},
        "model": final.name,
        "log": everything.summary | {"until": started.isoformat()},
        "gate": report.as_dict(),
        "warm_from": str(run_dir.resolve()),
        **warm.summary(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    save_run(out, final, final_data, metrics)
    target = family.renamed(CANARY_SUFFIX) if options.canary else family
    clock = time.perf_counter()
    try:
        published = publish(out, repository, family=target, ann=options.ann)
    except ExportError as exc:
        return done("refused", f"export refused: {exc}")
    durations["publish_s"] = round(time.perf_counter() - clock, 3)
    clock = time.perf_counter()
    try:
        activate(control, repository, target, published.version)
    except RecsysError as exc:
        previous = [v for v in versions(repository, target) if v != published.version]
        also = withdraw(control, repository, target, published.version, previous[-1]) if previous else None
        reason = f"version {published.version} did not load ({exc}); withdrawn"
        return done("failed", reason + (f"; {also}" if also else ""))
    durations["swap_s"] = round(time.perf_counter() - clock, 3)
    if options.canary:
        reason = f"version {published.version} serves the canary group: {report.reason}"
        return done("canary", reason, published_version=published.version)
    return done("promoted", f"version {published.version}: {report.reason}", published_version=published.version)
