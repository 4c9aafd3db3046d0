"""A gated retraining cycle against a real PostgreSQL and a real Triton: a candidate trained warm on the log is
gated on the newest window and swapped in under traffic with no failed request; a worse one is refused and the
served version keeps answering; a quiet log refuses for want of evidence."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tests_support import Served, log_plays

from recsys.core.errors import ConfigError
from recsys.core.triton_client import TritonRecommender
from recsys.loop.retrain import RetrainOptions, retrain_cycle
from recsys.loop.runner import Plan, parse_duration, run_loop
from serving.contract import ANN_INDEX_FILE
from trainer.ann import AnnPolicy
from trainer.triton.family import ENSEMBLE_ANN, ENSEMBLE_B, FACTOR, SCORER_ANN
from trainer.triton.repository import versions

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def logged(served: Served, served_world: Any) -> Served:
    """The served stack with an hour of plays in its log."""
    log_plays(served.database, served_world, NOW)
    return served


def test_a_worse_candidate_is_refused_and_the_served_version_keeps_answering(logged: Served, tmp_path: Path) -> None:
    options = RetrainOptions(window=timedelta(minutes=15), params={"regularization": 1e6})
    cycle = retrain_cycle(logged.repository, logged.database, logged.server, tmp_path, options, now=NOW)
    assert cycle.decision == "refused", cycle.reason
    assert "below the served" in cycle.reason
    assert cycle.gate is not None
    assert cycle.gate["candidate"]["ndcg@10"] < cycle.gate["served"]["ndcg@10"]
    assert versions(logged.repository, FACTOR) == [1]
    client = TritonRecommender(logged.server.urls.grpc)
    try:
        assert {a.model_version for a in client.recommend(ENSEMBLE_B, ["1", "2"])} == {1}
    finally:
        client.close()


def test_a_quiet_window_is_no_evidence(logged: Served, tmp_path: Path) -> None:
    later = NOW + timedelta(hours=2)  # nothing was played in the two hours before this
    cycle = retrain_cycle(logged.repository, logged.database, logged.server, tmp_path, RetrainOptions(), now=later)
    assert cycle.decision == "refused"
    assert "nothing to gate on" in cycle.reason


def test_a_good_candidate_is_swapped_in_under_traffic_with_no_failed_request(logged: Served, tmp_path: Path) -> None:
    errors: list[Exception] = []
    done = threading.Event()

    def traffic() -> None:
        client = TritonRecommender(logged.server.urls.grpc, timeout_s=30)
        try:
            while not done.is_set():
                try:
                    client.recommend(ENSEMBLE_B, [str(u) for u in range(1, 9)], top_k=10)
                except Exception as exc:  # every failure counts
                    errors.append(exc)
        finally:
            client.close()

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        # the loop publishes with the operator's RECSYS_ANN_* (the CLI passes AnnPolicy.from_settings): here the
        # threshold at 0 items, so the lineage's `auto` builds an index for this 400-item catalogue (gate off: the
        # test is about the setting reaching the loop's publish, not about recall)
        ann = AnnPolicy(kind="inherit", threshold_items=0, min_recall=0.0)
        options = RetrainOptions(window=timedelta(minutes=15), tolerance=0.2, ann=ann)
        cycles = run_loop(
            logged.repository, logged.database, logged.server, tmp_path, Plan(), options=options,
        )  # fmt: skip
    finally:
        done.set()
        thread.join(timeout=60)
    assert not errors, errors[:3]
    retrain = next(c for c in cycles if c.kind == "retrain")
    assert retrain.decision == "promoted", retrain.reason
    assert retrain.published_version == versions(logged.repository, FACTOR)[-1] == 2
    assert retrain.gate is not None
    assert retrain.gate["candidate"]["users"] >= 20
    assert {"read_s", "train_s", "refit_s", "publish_s", "swap_s"} <= set(retrain.durations)
    assert (logged.repository / SCORER_ANN / "2" / ANN_INDEX_FILE).is_file()  # v1 (default threshold) has none
    assert not (logged.repository / SCORER_ANN / "1").exists()
    client = TritonRecommender(logged.server.urls.grpc)
    try:  # the swap loaded the approximate path the new version brought
        assert {a.model_version for a in client.recommend(ENSEMBLE_ANN, ["1", "2"])} == {2}
    finally:
        client.close()


def test_durations_parse_and_bad_ones_are_one_line_errors() -> None:
    assert parse_duration("15m") == timedelta(minutes=15)
    assert parse_duration("30s") == timedelta(seconds=30)
    assert parse_duration("1.5h") == timedelta(minutes=90)
    for bad in ("15", "m", "-3m", "0s", "1w"):
        with pytest.raises(ConfigError, match="is not a duration"):
            parse_duration(bad)
