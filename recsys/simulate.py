"""Simulated listeners for the demo and the A/B tests: synthetic users whose true tastes come from the synthetic
world (``SyntheticWorld.preference``) ask the running stack for recommendations and click or skip by those tastes,
so two variants that recommend differently produce a real, measurable difference in CTR.

The click model is a cascade: the listener reads the list top-down, position ``p`` (0-based) is examined with
probability ``decay ** p`` (the first always), an examined item is clicked with the listener's true preference for
it and the click ends the reading; examined items that were not clicked are reported as skips.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from trainer.data.synthetic import SyntheticWorld


def cascade(
    rng: np.random.Generator, likes: npt.NDArray[np.float64], decay: float = 0.8
) -> tuple[int | None, list[int]]:
    """(clicked position or None, skipped positions) for one list whose items are liked with ``likes``."""
    skipped: list[int] = []
    for position, like in enumerate(likes):
        if position and rng.random() >= decay**position:
            break
        if rng.random() < like:
            return position, skipped
        skipped.append(position)
    return None, skipped


@dataclass
class SimulationSummary:
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    impressions: Counter[str] = field(default_factory=Counter)
    clicks: Counter[str] = field(default_factory=Counter)

    def ctr(self, group: str) -> float:
        return self.clicks[group] / self.impressions[group] if self.impressions[group] else float("nan")


async def _one(
    client: httpx.AsyncClient, world: SyntheticWorld, user_index: int, rng: np.random.Generator,
    summary: SimulationSummary, top_k: int,
) -> None:  # fmt: skip
    user = str(world.interactions.user_ids.ids[user_index])
    summary.requests += 1
    served = await client.post("/recommend", json={"user_id": user, "top_k": top_k}, headers={"X-User-Id": user})
    if served.status_code != 200:
        summary.errors[f"recommend {served.status_code}"] += 1
        return
    body: dict[str, Any] = served.json()
    items = [i["item_id"] for i in body["recommended_items"]]
    group = body["group"]
    summary.impressions[group] += 1
    indices = world.interactions.item_ids.indices(items)
    likes = np.where(indices >= 0, world.preference(user_index, np.maximum(indices, 0)), 0.0)
    clicked, skipped = cascade(rng, likes)
    if clicked is not None:
        summary.clicks[group] += 1
    event = {
        "user_id": user,
        "group": group,
        "request_id": body["request_id"],
        "clicked_item": None if clicked is None else items[clicked],
        "skipped_items": [items[p] for p in skipped],
        "inference_time_ms": body["inference_time_ms"],
        "event_id": uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | summary.requests).hex,
    }
    ack = await client.post("/feedback", json=event)
    if ack.status_code != 202:
        summary.errors[f"feedback {ack.status_code}"] += 1


async def simulate(
    base_url: str,
    world: SyntheticWorld,
    *,
    listeners: int = 400,
    requests_per_listener: int = 5,
    concurrency: int = 8,
    top_k: int = 10,
    seed: int = 0,
) -> SimulationSummary:
    """Drives ``base_url`` (NGINX or a gateway) with ``listeners`` random listeners of ``world``."""
    rng = np.random.default_rng(seed)
    users = rng.choice(world.n_users, size=min(listeners, world.n_users), replace=False)
    plan = np.repeat(users, requests_per_listener)
    rng.shuffle(plan)
    summary = SimulationSummary()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for user_index in plan.tolist():
        queue.put_nowait(user_index)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=10, limits=limits) as client:

        async def worker(worker_rng: np.random.Generator) -> None:
            while not queue.empty():
                await _one(client, world, queue.get_nowait(), worker_rng, summary, top_k)

        await asyncio.gather(*(worker(np.random.default_rng([seed, n])) for n in range(concurrency)))
    return summary
