"""Following new plays in PostgreSQL from inside a served lookup step (live fold-in).

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

import asyncpg

log = logging.getLogger(__name__)

NEW_CLICKS = """
SELECT seq, user_id, clicked_item FROM feedback
WHERE seq > $1 AND clicked_item IS NOT NULL
ORDER BY seq LIMIT $2
"""
OVERLAP = 1000  # sequence values re-read each poll (commits of several writers may become visible out of order)
PAGE = 5000


class FeedbackPoller(threading.Thread):
    """Polls ``feedback`` for new clicks every ``interval_s`` and hands (listener, item index) plays to ``on_plays``.

    Clicks on items the published model does not know are skipped. Survives database outages (reconnects every
    second); :meth:`stop` ends it.
    """

    def __init__(
        self,
        dsn: str,
        item_index: dict[str, int],
        on_plays: Callable[[list[tuple[str, int]]], object],
        *,
        interval_s: float = 0.1,
    ) -> None:
        super().__init__(name="feedback-poller", daemon=True)
        self.dsn, self.item_index, self.on_plays, self.interval_s = dsn, item_index, on_plays, interval_s
        self._stopping = threading.Event()
        self._seen: deque[int] = deque(maxlen=4 * OVERLAP)
        self._seen_set: set[int] = set()
        self.last_seq = 0
        self.polls = 0

    def stop(self) -> None:
        self._stopping.set()
        self.join(5)

    def run(self) -> None:
        asyncio.run(self._loop())

    def _fresh(self, seq: int) -> bool:
        if seq in self._seen_set:
            return False
        if len(self._seen) == self._seen.maxlen:
            self._seen_set.discard(self._seen[0])
        self._seen.append(seq)
        self._seen_set.add(seq)
        return True

    async def _loop(self) -> None:
        conn: asyncpg.Connection | None = None
        while not self._stopping.is_set():
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(self.dsn, timeout=5, command_timeout=10)
                rows = await conn.fetch(NEW_CLICKS, max(self.last_seq - OVERLAP, 0), PAGE)
                self.polls += 1
                plays = []
                for row in rows:
                    if self._fresh(row["seq"]):
                        item = self.item_index.get(row["clicked_item"])
                        if item is not None:
                            plays.append((row["user_id"], item))
                    self.last_seq = max(self.last_seq, row["seq"])
                if plays:
                    try:
                        self.on_plays(plays)
                    except Exception:  # a bad refold must not end live fold-in for the life of this version
                        log.exception("live fold-in: refolding %d plays failed; skipped", len(plays))
                if len(rows) < PAGE:
                    await asyncio.sleep(self.interval_s)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("live fold-in: feedback not readable (%s); retrying", exc)
                if conn is not None:
                    conn.terminate()
                conn = None
                await asyncio.sleep(1.0)
        if conn is not None:
            await conn.close()
