"""New releases in minutes, against a real PostgreSQL and a real Triton: a release that enough listeners played
becomes recommendable to its genre's fans without a retrain, under traffic, with no failed request; a spam item
played by one listener never enters the catalogue; each refresh is recorded."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
from tests_support import Served, on_database

from recsys.core.triton_client import TritonRecommender
from recsys.loop.items import refresh_items
from recsys.loop.records import record
from trainer.artifacts import load_run
from trainer.new_items import CatalogueRules
from trainer.triton.family import ENSEMBLE_A, FACTOR
from trainer.triton.repository import versions

RELEASE, SPAM = "release-2026-12", "spam-item"


def _play(url: str, rows: list[tuple[str, str]]) -> None:
    now = datetime.now(UTC)

    async def work(conn: asyncpg.Connection) -> None:
        await conn.executemany(
            "INSERT INTO plays (event_id, ts, user_id, item_id) VALUES ($1, $2, $3, $4)",
            [(f"{user}-{item}-{n}", now, user, item) for n, (user, item) in enumerate(rows)],
        )

    on_database(url, work)


def test_a_release_reaches_its_genres_fans_and_spam_never_does(
    served: Served, served_world: Any, served_run: Path, tmp_path: Path
) -> None:
    run = load_run(served_run)
    external = served_world.interactions.user_ids.ids
    genre = 2
    fans = [str(external[u]) for u in np.argsort(-served_world.user_taste[:, genre])]
    fans = [u for u in fans if run.user_ids.index(u) is not None]
    first, others, strangers = fans[:15], fans[15:45], fans[-30:]
    _play(served.database, [(user, RELEASE) for user in first for _ in range(5)])
    _play(served.database, [(first[0], SPAM)] * 500)  # one listener cannot make an item

    errors: list[Exception] = []
    done = threading.Event()

    def traffic() -> None:
        client = TritonRecommender(served.server.urls.grpc, timeout_s=30)
        try:
            while not done.is_set():
                try:
                    client.recommend(ENSEMBLE_A, others[:8], top_k=10)
                except Exception as exc:  # every failure counts
                    errors.append(exc)
        finally:
            client.close()

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        cycle = refresh_items(served.repository, served.database, served.server, tmp_path, rules=CatalogueRules())
    finally:
        done.set()
        thread.join(timeout=60)
    assert not errors, errors[:3]
    assert cycle.decision == "promoted", cycle.reason
    assert (cycle.items_added, cycle.published_version) == (1, 2)
    assert versions(served.repository, FACTOR)[-1] == 2
    assert record(served.database, cycle) > 0

    client = TritonRecommender(served.server.urls.grpc)
    try:
        fan_answers = client.recommend(ENSEMBLE_A, others, top_k=20)
        stranger_answers = client.recommend(ENSEMBLE_A, strangers, top_k=20)
        first_answers = client.recommend(ENSEMBLE_A, first, top_k=50)
    finally:
        client.close()
    assert {a.model_version for a in fan_answers} == {2}
    share = np.mean([RELEASE in a.item_ids for a in fan_answers])
    assert share >= 0.25, share
    assert not any(RELEASE in a.item_ids for a in stranger_answers)
    assert not any(RELEASE in a.item_ids for a in first_answers)  # its listeners have heard it
    assert not any(SPAM in a.item_ids for a in (*fan_answers, *stranger_answers, *first_answers))

    again = refresh_items(served.repository, served.database, served.server, tmp_path, rules=CatalogueRules())
    assert again.decision == "unchanged"  # the release is known now; the spam item still has one listener
    assert "no unseen item" in again.reason
