"""Canary rollouts: a candidate serves a share of listeners as its own experiment group before it serves everyone.

The canary is the served family under other names (:meth:`trainer.triton.family.Family.renamed`: ``recsys_b`` ->
``recsys_b_canary``), loaded beside it in the same Triton. The share is the experiment's: a group named ``canary``
routed to a canary ensemble (NGINX and the gateway split listeners by that one file, so the share cannot be changed
behind their back); ``recsys retrain --canary SHARE`` checks that the running experiment gives it exactly SHARE.

Without a candidate the canary serves the same run as everyone else (:func:`ensure_canary`), so its group is never
answered by a missing model. A gated candidate goes to the canary only (:func:`start_canary`); ``recsys ab-report``
compares the groups live, and :func:`verdict` reads the same report: the canary is promoted once the always-valid
interval of its CTR difference against the control group excludes a loss (``low > -margin``), and withdrawn once it
shows one (``high < 0``); before either it keeps running. :func:`promote` publishes the canary's run as the next
version of the served family, the same hot swap as any publish.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from recsys.core.errors import ConfigError
from recsys.loop.records import Cycle
from recsys.loop.records import Decision as CycleDecision
from recsys.loop.retrain import CANARY_SUFFIX
from trainer.ann import AnnPolicy
from trainer.triton.family import FACTOR, Family
from trainer.triton.publish import publish
from trainer.triton.repository import ModelControl, activate, manifest, served_run, versions

CANARY_GROUP = "canary"
SUFFIX = CANARY_SUFFIX


def canary_of(family: Family = FACTOR) -> Family:
    return family.renamed(SUFFIX)


def check_experiment(groups: dict[str, tuple[str, float]], share: float, family: Family = FACTOR) -> None:
    """``groups``: name -> (model, share %). One-line ConfigError unless a ``canary`` group serves a canary ensemble
    of ``family`` with exactly ``share`` percent."""
    canary = canary_of(family)
    wanted = f"a group `{CANARY_GROUP}` with share {share:g} serving one of {', '.join(canary.ensembles)}"
    if CANARY_GROUP not in groups:
        raise ConfigError(f"--canary {share:g} needs {wanted} in the experiment (RECSYS_EXPERIMENT_FILE)")
    model, given = groups[CANARY_GROUP]
    if model not in canary.ensembles or abs(given - share) > 1e-9:
        raise ConfigError(
            f"--canary {share:g} needs {wanted}; the experiment's `{CANARY_GROUP}` serves {model} to {given:g}%"
        )


def ensure_canary(
    repository: Path, control: ModelControl, family: Family = FACTOR, *, ann: AnnPolicy | None = None
) -> int:
    """The canary family's version, loaded (a restarted Triton loads only the served families), publishing the
    served run into it first when it has none. ``ann``, here and below: the publish's index policy and gate
    (:class:`trainer.ann.AnnPolicy`, ``RECSYS_ANN_*``; None: the lineage's kind, default gate)."""
    canary = canary_of(family)
    held = versions(repository, canary)
    if held:
        activate(control, repository, canary, held[-1], retire=len(held) > 1)
        return held[-1]
    _, run_dir = served_run(repository, family)
    published = publish(run_dir, repository, family=canary, ann=ann)
    activate(control, repository, canary, published.version)
    return published.version


def start_canary(
    repository: Path, control: ModelControl, run_dir: Path, family: Family = FACTOR, *, ann: AnnPolicy | None = None
) -> int:
    """Publishes ``run_dir`` into the canary family and hot-swaps it in; returns the canary's version."""
    canary = canary_of(family)
    published = publish(run_dir, repository, family=canary, ann=ann)
    activate(control, repository, canary, published.version)
    return published.version


def promote(repository: Path, control: ModelControl, family: Family = FACTOR, *, ann: AnnPolicy | None = None) -> int:
    """The canary's run as the next version of the served family (everyone gets it); returns that version."""
    _, run_dir = served_run(repository, canary_of(family))
    published = publish(run_dir, repository, family=family, ann=ann)
    activate(control, repository, family, published.version)
    return published.version


def canary_since(repository: Path, family: Family = FACTOR) -> datetime:
    """When the canary's current version was published: the start of its comparison."""
    canary = canary_of(family)
    held = versions(repository, canary)
    if not held:
        raise ConfigError("no canary is running (publish one with `recsys retrain --canary SHARE`)")
    published = manifest(repository, canary, held[-1]).get("published_at")
    return datetime.fromisoformat(str(published)) if published else datetime.now(UTC)


Decision = Literal["promote", "withdraw", "wait"]


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reason: str
    difference: float  # canary CTR minus control CTR
    low: float  # always-valid interval of the difference
    high: float
    users: int


def decide(difference: float, low: float, high: float, users: int, *, margin: float = 0.0) -> Verdict:
    """The rule alone: promote once the always-valid interval excludes a loss larger than ``margin``, withdraw once
    it excludes a gain, wait otherwise (the interval is valid at every look, so looking often costs nothing)."""
    if low > -margin:
        return Verdict("promote", f"CTR {difference:+.4f}, always-valid interval [{low:+.4f}, {high:+.4f}] "
                       f"excludes a loss beyond {margin:g}", difference, low, high, users)  # fmt: skip
    if high < 0:
        return Verdict("withdraw", f"CTR {difference:+.4f}, always-valid interval [{low:+.4f}, {high:+.4f}] "
                       "shows a loss", difference, low, high, users)  # fmt: skip
    return Verdict("wait", f"CTR {difference:+.4f}, always-valid interval [{low:+.4f}, {high:+.4f}] holds both "
                   f"a loss and a gain ({users} listeners so far)", difference, low, high, users)  # fmt: skip


def verdict(
    dsn: str,
    since: datetime,
    *,
    control: str,
    planned_users: int,
    margin: float = 0.0,
    alpha: float = 0.05,
) -> Verdict:
    """The live A/B report of the canary group against ``control`` since ``since``, and :func:`decide` on it."""
    from feedback.queries import load_report_input
    from feedback.report import build_report

    data, _ = asyncio.run(load_report_input(dsn, since, datetime.now(UTC), bucket="minute"))
    report = build_report(data, control=control, alpha=alpha, planned_users=planned_users)
    comparison = next((c for c in report.comparisons if c.metric == "ctr" and c.treatment == CANARY_GROUP), None)
    if comparison is None:
        raise ConfigError(f"no `{CANARY_GROUP}` group in the log since {since.isoformat(timespec='seconds')}")
    users = report.group(CANARY_GROUP).users + report.group(control).users
    interval = comparison.always_valid
    return decide(interval.value, interval.low, interval.high, users, margin=margin)


def busy(repository: Path, family: Family = FACTOR) -> bool:
    """Whether the canary serves a candidate (a run other than the served family's)."""
    canary = canary_of(family)
    if not versions(repository, canary):
        return False
    return served_run(repository, canary)[1].resolve() != served_run(repository, family)[1].resolve()


@dataclass(frozen=True)
class CanaryPlan:
    """How a running canary is judged: against which group, with which planned sample, with which margin."""

    control: str = "A"
    planned_users: int = 10_000
    margin: float = 0.0


def canary_cycle(
    repository: Path,
    dsn: str,
    control: ModelControl,
    plan: CanaryPlan,
    family: Family = FACTOR,
    *,
    ann: AnnPolicy | None = None,
) -> Cycle:
    """Judges the running candidate (:func:`verdict`): promotes it to everyone, withdraws it (the canary serves the
    served run again), or leaves it running; ``unchanged`` when no candidate runs."""
    started = datetime.now(UTC)
    served = versions(repository, family)[-1] if versions(repository, family) else None

    def done(decision: CycleDecision, reason: str, published: int | None = None) -> Cycle:
        return Cycle(kind="canary", started=started, finished=datetime.now(UTC), decision=decision, reason=reason,
                     served_version=served, published_version=published)  # fmt: skip

    if not busy(repository, family):
        return done("unchanged", "no candidate on the canary")
    judged = verdict(
        dsn, canary_since(repository, family), control=plan.control, planned_users=plan.planned_users,
        margin=plan.margin,
    )  # fmt: skip
    if judged.decision == "promote":
        return done("promoted", judged.reason, promote(repository, control, family, ann=ann))
    if judged.decision == "withdraw":
        _, run_dir = served_run(repository, family)
        return done("withdrawn", judged.reason, start_canary(repository, control, run_dir, family, ann=ann))
    return done("unchanged", judged.reason)
