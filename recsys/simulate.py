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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from recsys.stack.process import ServiceError
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
    try:
        served = await client.post("/recommend", json={"user_id": user, "top_k": top_k}, headers={"X-User-Id": user})
    except httpx.TransportError as exc:  # counted like an error status: the run goes on and reports them
        summary.errors[f"recommend {type(exc).__name__}"] += 1
        return
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
    try:
        ack = await client.post("/feedback", json=event)
    except httpx.TransportError as exc:
        summary.errors[f"feedback {type(exc).__name__}"] += 1
        return
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
    on_request: Callable[[], None] | None = None,
) -> SimulationSummary:
    """Drives ``base_url`` (NGINX or a gateway) with ``listeners`` random listeners of ``world`` (at most all of
    its users), calling ``on_request`` after each listener's turn (a progress bar). Raises
    :class:`ServiceError` at once when nothing answers at ``base_url``; later failures are counted in the
    summary's ``errors``."""
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
        try:
            await client.get("/")  # any answer (a 404 too) says something listens there
        except httpx.TransportError as exc:
            raise ServiceError(
                f"nothing answers at {base_url} ({exc!r}): is a stack running (`recsys stack up`)?"
            ) from exc

        async def worker(worker_rng: np.random.Generator) -> None:
            while not queue.empty():
                await _one(client, world, queue.get_nowait(), worker_rng, summary, top_k)
                if on_request is not None:
                    on_request()

        await asyncio.gather(*(worker(np.random.default_rng([seed, n])) for n in range(concurrency)))
    return summary


def organic_plays(
    world: SyntheticWorld,
    users: npt.NDArray[np.int64],
    per_user: int,
    rng: np.random.Generator,
    *,
    available: npt.NDArray[np.bool_] | None = None,
    boost: npt.NDArray[np.float64] | None = None,
) -> list[tuple[int, int]]:
    """(user index, item index) plays from the listeners' own players: a genre by the listener's taste, then an
    item of that genre by popularity (times ``boost``, e.g. a new release's), among ``available`` items."""
    n_genres = world.user_taste.shape[1]
    weight = world.item_popularity * (1.0 if boost is None else boost)
    if available is not None:
        weight = np.where(available, weight, 0.0)
    members = [np.flatnonzero((world.item_genre == g) & (weight > 0)) for g in range(n_genres)]
    shares = [weight[m] / weight[m].sum() if len(m) else m for m in members]
    out: list[tuple[int, int]] = []
    for user in users.tolist():
        taste = world.user_taste[user].astype(np.float64)
        genres = rng.choice(n_genres, size=per_user, p=taste / taste.sum())
        out.extend(
            (user, int(rng.choice(members[genre], p=shares[genre]))) for genre in genres.tolist() if len(members[genre])
        )
    return out


@dataclass
class PlaysSummary:
    accepted: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    acked_at: dict[int, float] = field(default_factory=dict)  # batch number -> when its 202 arrived (monotonic)


async def post_plays(
    base_url: str,
    world: SyntheticWorld,
    plays: list[tuple[int, int]],
    *,
    batch: int = 100,
    concurrency: int = 4,
    on_ack: Any = None,
) -> PlaysSummary:
    """Sends ``plays`` to ``POST /plays`` in batches; ``on_ack(batch_plays, monotonic_time)`` after each 202."""
    import time

    user_ids, item_ids = world.interactions.user_ids.ids, world.interactions.item_ids.ids
    now_ms = int(time.time() * 1000)
    summary = PlaysSummary()
    chunks = [plays[i : i + batch] for i in range(0, len(plays), batch)]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(len(chunks)):
        queue.put_nowait(n)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=10, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                n = queue.get_nowait()
                body: dict[str, list[dict[str, object]]] = {
                    "plays": [
                        {"user_id": str(user_ids[u]), "item_id": str(item_ids[i]), "ts_ms": now_ms - 1000 + k}
                        for k, (u, i) in enumerate(chunks[n])
                    ]
                }
                response = await client.post("/plays", json=body)
                if response.status_code != 202:
                    summary.errors[f"plays {response.status_code}"] += 1
                    continue
                summary.accepted += len(chunks[n])
                summary.acked_at[n] = time.monotonic()
                if on_ack is not None:
                    on_ack(chunks[n], summary.acked_at[n])

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summary
