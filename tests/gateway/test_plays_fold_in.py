"""Live fold-in from organic plays against the real stack: a brand-new listener who never clicks a recommendation
plays five tracks of one genre in their player; ``POST /plays`` carries them through the writer into ``plays``, the
lookup step folds them in (it follows ``plays.seq``), and the next recommendations follow that genre, no retraining.
The same approach as tests/stack/test_live_fold_in.py, which does it with clicks."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

import httpx
import numpy as np
import pytest

from recsys.stack.local import LocalStack

pytestmark = pytest.mark.stack


def recommend(stack: LocalStack, user: str, k: int) -> dict[str, Any]:
    response = httpx.post(stack.gateway_url + "/recommend", json={"user_id": user, "top_k": k}, timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_five_organic_plays_of_a_genre_turn_the_fallback_into_that_genre(stack: LocalStack, served_world: Any) -> None:
    world = served_world
    genre_of = {str(world.interactions.item_ids.ids[i]): int(g) for i, g in enumerate(world.item_genre)}
    user = f"organic-listener-{uuid.uuid4().hex[:8]}"

    before = recommend(stack, user, 10)
    assert before["fallback"] is True
    catalogue = [i["item_id"] for i in recommend(stack, user, 400)["recommended_items"]]
    genres = Counter(genre_of[i] for i in catalogue)
    taste = min(genres, key=lambda g: sum(genre_of[i["item_id"]] == g for i in before["recommended_items"]))
    played = [i for i in catalogue if genre_of[i] == taste][:5]
    assert len(played) == 5

    start = int(time.time() * 1000) - 20 * 60_000  # a listening session that ended a minute ago
    batch = [
        {"user_id": user, "item_id": item, "ts_ms": start + n * 240_000, "ms_played": 230_000}
        for n, item in enumerate(played)
    ]
    ack = httpx.post(stack.gateway_url + "/plays", json={"plays": batch}, timeout=10)
    assert ack.status_code == 202, ack.text
    assert ack.json()["accepted"] == 5
    deadline = time.monotonic() + 15
    while True:  # until all five plays are folded in: personal now, and none of the played items offered again
        after = recommend(stack, user, 10)
        offered = {i["item_id"] for i in after["recommended_items"]}
        if not after["fallback"] and not set(played) & offered:
            break
        assert time.monotonic() < deadline, f"the lookup never folded all five plays in: {after}"
        time.sleep(0.05)

    share_before = np.mean([genre_of[i["item_id"]] == taste for i in before["recommended_items"]])
    share_after = np.mean([genre_of[i["item_id"]] == taste for i in after["recommended_items"]])
    assert share_after >= 0.6, (share_before, share_after)
    assert share_after >= share_before + 0.4
