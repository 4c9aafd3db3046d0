"""Following new plays in PostgreSQL from inside a served lookup step (live fold-in).

Two streams feed a listener's live vector: clicks on recommendations (``feedback.clicked_item``) and organic plays
from the player (``plays``). Each table has an insertion sequence (``seq``); the poller keeps one cursor per
table and hands every new (listener, item) pair to the fold-in.

Why PostgreSQL and not a cache fed by the writer: the writer already puts every accepted event there durably, so
the lookup reads the one source of truth and a restarted stub catches up by itself; a cache would be another
moving part with its own outage modes, for a few milliseconds of freshness that the writer's 50 ms batches make
moot. A click reaches the lookup one writer batch plus one poll after its 202 (about 150 ms); the request path
itself only does a dictionary look-up per listener.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

log = logging.getLogger(__name__)

OVERLAP = 1000  # sequence values re-read each poll (commits of several writers may become visible out of order)
PAGE = 5000


@dataclass
class Stream:
    """One table's new (listener, item) rows after a sequence value, read in pages with an overlap."""

    name: str
    query: str  # $1: after this seq, $2: page size, $3: not before this time; returns seq, user_id, item_id
    last_seq: int = 0
    _seen: deque[int] = field(default_factory=lambda: deque(maxlen=4 * OVERLAP))
    _seen_set: set[int] = field(default_factory=set)

    def fresh(self, seq: int) -> bool:
        """Whether ``seq`` was not handed on yet (the overlap re-reads some rows)."""
        if seq in self._seen_set:
            return False
        if len(self._seen) == self._seen.maxlen:
            self._seen_set.discard(self._seen[0])
        self._seen.append(seq)
        self._seen_set.add(seq)
        self.last_seq = max(self.last_seq, seq)
        return True


def streams() -> list[Stream]:
    """Clicks on recommendations and organic plays, the two positives the fold-in learns from."""
    return [
        Stream(
            "clicks",
            "SELECT seq, user_id, clicked_item AS item_id FROM feedback "
            "WHERE seq > $1 AND clicked_item IS NOT NULL AND ts >= $3 ORDER BY seq LIMIT $2",
        ),
        Stream("plays", "SELECT seq, user_id, item_id FROM plays WHERE seq > $1 AND ts >= $3 ORDER BY seq LIMIT $2"),
    ]


class FeedbackPoller(threading.Thread):
    """Polls new clicks and plays every ``interval_s`` and hands (listener, item index) pairs to ``on_plays``.

    Events on items the published model does not know are skipped (a new release reaches the catalogue through a
    publish, not here), and so are events before ``since``: a version trained on the log until then already holds
    them in its history, and folding them in again would count them twice. Survives database outages (reconnects
    every second); :meth:`stop` ends it.
    """

    def __init__(
        self,
        dsn: str,
        item_index: dict[str, int],
        on_plays: Callable[[list[tuple[str, int]]], object],
        *,
        since: datetime | None = None,
        interval_s: float = 0.1,
    ) -> None:
        super().__init__(name="feedback-poller", daemon=True)
        self.dsn, self.item_index, self.on_plays, self.interval_s = dsn, item_index, on_plays, interval_s
        self.since = since or datetime(1970, 1, 1, tzinfo=UTC)
        self._stopping = threading.Event()
        self.streams = streams()
        self.polls = 0

    def stop(self) -> None:
        self._stopping.set()
        self.join(5)

    def run(self) -> None:
        asyncio.run(self._loop())

    async def _poll(self, conn: asyncpg.Connection, stream: Stream) -> bool:
        """Reads one page of ``stream``; True when the page was full (more is waiting)."""
        rows = await conn.fetch(stream.query, max(stream.last_seq - OVERLAP, 0), PAGE, self.since)
        plays = []
        for row in rows:
            if stream.fresh(row["seq"]):
                item = self.item_index.get(row["item_id"])
                if item is not None:
                    plays.append((row["user_id"], item))
        if plays:
            try:
                self.on_plays(plays)
            except Exception:  # a bad refold must not end live fold-in for the life of this version
                log.exception("live fold-in: refolding %d %s failed; skipped", len(plays), stream.name)
        return len(rows) == PAGE

    async def _loop(self) -> None:
        conn: asyncpg.Connection | None = None
        while not self._stopping.is_set():
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(self.dsn, timeout=5, command_timeout=10)
                more = [await self._poll(conn, stream) for stream in self.streams]
                self.polls += 1
                if not any(more):
                    await asyncio.sleep(self.interval_s)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("live fold-in: the log is not readable (%s); retrying", exc)
                if conn is not None:
                    conn.terminate()
                conn = None
                await asyncio.sleep(1.0)
        if conn is not None:
            await conn.close()
