"""Canary rollouts against a real PostgreSQL and a real Triton: a gated candidate serves the canary group only, the
served version keeps serving everyone else; the live A/B comparison promotes it once its always-valid interval
excludes a loss, or withdraws it once it shows one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
from tests_support import Served, log_plays, on_database

from recsys.core.errors import ConfigError
from recsys.core.triton_client import TritonRecommender
from recsys.loop.canary import (
    CanaryPlan,
    busy,
    canary_cycle,
    canary_of,
    check_experiment,
    decide,
    ensure_canary,
    start_canary,
)
from recsys.loop.records import record
from recsys.loop.retrain import RetrainOptions, retrain_cycle
from trainer.triton.family import ENSEMBLE_B, FACTOR
from trainer.triton.repository import versions

NOW = datetime.now(UTC)
CANARY_B = f"{ENSEMBLE_B}_canary"


def test_the_rule_promotes_withdraws_or_waits() -> None:
    assert decide(0.05, 0.01, 0.09, 800).decision == "promote"
    assert decide(-0.002, -0.004, 0.03, 800, margin=0.005).decision == "promote"  # within the margin
    assert decide(-0.05, -0.09, -0.01, 800).decision == "withdraw"
    assert decide(0.01, -0.03, 0.05, 800).decision == "wait"


def test_the_shipped_canary_experiment_gives_the_canary_its_share() -> None:
    from gateway.experiment import load_experiment

    experiment = load_experiment(Path(__file__).resolve().parents[2] / "gateway" / "experiments" / "canary.yaml")
    check_experiment({g.name: (g.model, float(g.share)) for g in experiment.groups}, 10)


def test_the_share_is_the_experiments() -> None:
    groups = {"A": ("recsys_a", 45.0), "B": ("recsys_b", 45.0), "canary": (CANARY_B, 10.0)}
    check_experiment(groups, 10)
    with pytest.raises(ConfigError, match="serves recsys_b_canary to 10%"):
        check_experiment(groups, 20)
    with pytest.raises(ConfigError, match="needs a group `canary`"):
        check_experiment({"A": ("recsys_a", 100.0)}, 10)


def _traffic(url: str, ctr: dict[str, float], users: int = 400) -> None:
    """Impressions and clicks of ``users`` listeners per group, each group clicking with its own rate."""
    rng = np.random.default_rng(3)
    now = datetime.now(UTC)
    impressions, feedback = [], []
    for group, rate in ctr.items():
        for n in range(users):
            request = f"{group}-{n}"
            impressions.append((request, now, f"listener-{group}-{n}", group, "m", 1, ["1", "2"], 1.0, False))
            clicked = "1" if rng.random() < rate else None
            feedback.append((f"e-{request}", now, request, f"listener-{group}-{n}", group, clicked, ["2"], 1.0))

    async def insert(conn: asyncpg.Connection) -> None:
        await conn.execute("TRUNCATE impressions, feedback")
        await conn.executemany(
            "INSERT INTO impressions (request_id, ts, user_id, ab_group, model, model_version, items, latency_ms, "
            "fallback) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            impressions,
        )
        await conn.executemany(
            "INSERT INTO feedback (event_id, ts, request_id, user_id, ab_group, clicked_item, skipped_items, "
            "inference_time_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            feedback,
        )

    on_database(url, insert)


def _version_of(server: Any, model: str) -> int:
    client = TritonRecommender(server.urls.grpc)
    try:
        return client.recommend(model, ["1"])[0].model_version
    finally:
        client.close()


def test_a_candidate_serves_the_canary_then_everyone_or_is_withdrawn(
    served: Served, served_world: Any, served_run: Path, tmp_path: Path
) -> None:
    log_plays(served.database, served_world, NOW)
    canary = canary_of(FACTOR)
    first = ensure_canary(served.repository, served.server)
    assert versions(served.repository, canary) == [first]
    assert not busy(served.repository)  # the canary serves what everyone gets
    assert _version_of(served.server, CANARY_B) == first

    options = RetrainOptions(window=timedelta(minutes=15), tolerance=0.2, canary=True)
    cycle = retrain_cycle(served.repository, served.database, served.server, tmp_path, options, now=NOW)
    assert cycle.decision == "canary", cycle.reason
    assert busy(served.repository)
    assert _version_of(served.server, CANARY_B) == cycle.published_version
    assert versions(served.repository, FACTOR) == [1]  # everyone else keeps version 1
    assert _version_of(served.server, ENSEMBLE_B) == 1

    plan = CanaryPlan(control="A", planned_users=2000)
    _traffic(served.database, {"A": 0.40, "canary": 0.39})
    assert canary_cycle(served.repository, served.database, served.server, plan).decision == "unchanged"  # wait

    _traffic(served.database, {"A": 0.20, "canary": 0.60})
    promoted = canary_cycle(served.repository, served.database, served.server, plan)
    assert promoted.decision == "promoted", promoted.reason
    assert _version_of(served.server, ENSEMBLE_B) == promoted.published_version
    assert not busy(served.repository)

    start_canary(served.repository, served.server, served_run)  # an older run as the next candidate
    assert busy(served.repository)
    _traffic(served.database, {"A": 0.60, "canary": 0.20})
    withdrawn = canary_cycle(served.repository, served.database, served.server, plan)
    assert withdrawn.decision == "withdrawn", withdrawn.reason
    assert not busy(served.repository)  # the canary serves the served run again
    assert _version_of(served.server, ENSEMBLE_B) == promoted.published_version
    for done in (cycle, promoted, withdrawn):  # the kinds and decisions of migration 0005
        assert record(served.database, done) > 0
