"""Live fold-in against the real stack: a brand-new listener's clicks reach PostgreSQL through the gateway and the
writer, the lookup step folds them in, and the next recommendations follow the listener's taste, no retraining."""

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


def test_five_plays_of_one_taste_turn_the_fallback_into_that_taste(stack: LocalStack, served_world: Any) -> None:
    world = served_world
    genre_of = {str(world.interactions.item_ids.ids[i]): int(g) for i, g in enumerate(world.item_genre)}
    user = f"new-listener-{uuid.uuid4().hex[:8]}"

    before = recommend(stack, user, 10)
    assert before["fallback"] is True
    shown = recommend(stack, user, 400)  # what a new listener browses: the popularity ranking
    items = [i["item_id"] for i in shown["recommended_items"]]
    genres = Counter(genre_of[i] for i in items)
    taste = min(
        genres, key=lambda g: sum(genre_of[i] == g for i in (x["item_id"] for x in before["recommended_items"]))
    )
    played = [i for i in items if genre_of[i] == taste][:5]
    assert len(played) == 5

    for item in played:
        ack = httpx.post(stack.gateway_url + "/feedback", json={
            "user_id": user, "group": shown["group"], "request_id": shown["request_id"], "clicked_item": item,
        })  # fmt: skip
        assert ack.status_code == 202
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
