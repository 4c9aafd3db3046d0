"""New releases in minutes: plays of items the served version does not know -> item vectors -> a fast publish.

One refresh reads, from ``plays``, the items unknown to the served run that enough distinct listeners played
(:class:`trainer.new_items.CatalogueRules`), gives them vectors with the closed-form ALS item step, writes the
served run with those items appended, and publishes and hot-swaps it like any version (export, parity, pinned
ensembles: no request fails during the swap). It costs one export of the model (seconds at these sizes), so a
loop every 30 s serves a release within a minute or two of its qualifying plays.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from recsys.core.dsn import connect
from recsys.core.errors import ConfigError, DataError, RecsysError
from recsys.loop.records import Cycle, Decision
from trainer.ann import AnnPolicy
from trainer.artifacts import load_run
from trainer.models.als import ALS
from trainer.new_items import CatalogueRules, admit, extend_run
from trainer.triton.family import FACTOR, Family
from trainer.triton.publish import publish
from trainer.triton.repository import ModelControl, activate, served_run, withdraw

log = logging.getLogger(__name__)

# Only items with enough distinct listeners leave the database: the spam rule's first half, in SQL.
QUALIFYING_PLAYS = """
SELECT user_id, item_id, count(*)::float8 AS plays
FROM plays
WHERE item_id IN (
    SELECT item_id FROM plays
    WHERE NOT (item_id = ANY($1::text[]))
    GROUP BY item_id
    HAVING count(DISTINCT user_id) >= $2
)
GROUP BY user_id, item_id
"""


class LogUnreadableError(RecsysError):
    """The log could not be read; the served version is left alone."""


def new_item_plays(dsn: str, known_items: list[str], min_listeners: int) -> list[tuple[str, str, float]]:
    """(listener, item, plays) of the unknown items that at least ``min_listeners`` distinct listeners played."""

    async def read() -> list[tuple[str, str, float]]:
        try:
            conn = await connect(dsn, timeout=10)  # any failure (a bad URL too): one line, no password
        except (ConfigError, DataError) as exc:
            raise LogUnreadableError(f"plays are not readable: {exc}") from None
        try:
            rows = await conn.fetch(QUALIFYING_PLAYS, known_items, min_listeners, timeout=60)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise LogUnreadableError(f"plays are not readable: {exc}") from exc
        finally:
            await conn.close()
        return [(row["user_id"], row["item_id"], float(row["plays"])) for row in rows]

    return asyncio.run(read())


def refresh_items(
    repository: Path,
    dsn: str,
    control: ModelControl,
    workdir: Path,
    *,
    rules: CatalogueRules | None = None,
    family: Family = FACTOR,
    ann: AnnPolicy | None = None,
) -> Cycle:
    """One refresh of ``family`` (the factor family, or a renamed instance of it; see the module docstring); the
    cycle says what it did (``unchanged`` when nothing qualified). ``ann``: the publish's index policy and gate
    (:class:`trainer.ann.AnnPolicy`; None: the lineage's kind, default gate)."""
    rules = rules or CatalogueRules()
    started, clock = datetime.now(UTC), time.perf_counter()
    durations: dict[str, float] = {}
    served, run_dir = served_run(repository, family)
    run = load_run(run_dir)
    if not isinstance(run.model, ALS):
        return Cycle(
            kind="items", started=started, finished=datetime.now(UTC), decision="unchanged", served_version=served,
            reason=f"a {run.model.name} model has no closed-form item step: its new items wait for the next retrain",
        )  # fmt: skip
    known = run.item_ids.ids.astype(str).tolist()
    plays = new_item_plays(dsn, known, rules.min_listeners)
    durations["read_s"] = round(time.perf_counter() - clock, 3)
    admitted = admit(plays, set(known), rules)

    def done(decision: Decision, reason: str, published: int | None = None, added: int = 0) -> Cycle:
        return Cycle(
            kind="items", started=started, finished=datetime.now(UTC), decision=decision, reason=reason,
            served_version=served, published_version=published, durations=durations, items_added=added,
        )  # fmt: skip

    if not admitted:
        return done("unchanged", f"no unseen item has plays from {rules.min_listeners} distinct listeners")
    step = time.perf_counter()
    extended = extend_run(run_dir, workdir / f"items-{started:%Y%m%dT%H%M%S%f}", admitted, rules, run=run)
    durations["item_step_s"] = round(time.perf_counter() - step, 3)
    if not extended.added:
        return done("unchanged", f"{len(admitted)} item(s) qualify, but not from listeners the model knows yet")
    step = time.perf_counter()
    published = publish(extended.run_dir, repository, family=family, ann=ann)
    durations["publish_s"] = round(time.perf_counter() - step, 3)
    step = time.perf_counter()
    try:
        activate(control, repository, family, published.version)
    except RecsysError as exc:
        also = withdraw(control, repository, family, published.version, served)
        reason = f"version {published.version} did not load ({exc}); withdrawn, version {served} serves"
        return done("failed", reason + (f"; {also}" if also else ""))
    durations["swap_s"] = round(time.perf_counter() - step, 3)
    log.info("new items %s served as version %d", ", ".join(extended.added), published.version)
    shown = ", ".join(extended.added[:5]) + (" ..." if len(extended.added) > 5 else "")
    return done("promoted", f"{len(extended.added)} new item(s): {shown}", published.version, len(extended.added))
