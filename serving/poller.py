"""Following new plays in PostgreSQL from inside a served lookup step (live fold-in).

Two streams feed a listener's live vector: clicks on recommendations (``feedback.clicked_item``) and organic plays
from the player (``plays``). Each table has an insertion sequence (``seq``); the poller keeps one cursor per
table and hands every new (listener, item) pair to the fold-in.

Why PostgreSQL and not a cache fed by the writer: the writer already puts every accepted event there durably, so
the lookup reads the one source of truth and a restarted stub catches up by itself; a cache would be another
moving part with its own outage modes, for a few milliseconds of freshness that the writer's 50 ms batches make
moot. A click reaches the lookup one writer batch plus one poll after its 202 (about 150 ms); the request path
itself only does a dictionary look-up per listener.

Only clean clicks are folded in, by the one definition the A/B report uses: the ``clean`` column of the view
``feedback_checked`` (migration 0006: the click's impression exists, the item was shown, listener and group agree).
A forged click on a request that was never served is an orphan and moves nobody's vector. A click whose impression
has not arrived yet is an orphan for a moment too (the gateway sends impressions in batches, after the click's own
forward): such clicks wait, re-checked at every poll, and are folded in once their impression makes them clean, or
dropped once they are ``ORPHAN_GRACE_S`` old (at most ``MAX_WAITING`` wait; the oldest go first).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import asyncpg

log = logging.getLogger(__name__)

OVERLAP = 1000  # sequence values re-read each poll (commits of several writers may become visible out of order)
PAGE = 5000
ORPHAN_GRACE_S = 30.0  # how long a click may wait for its impression (the gateway retries impressions meanwhile)
MAX_WAITING = 10_000
MAX_RETRY_S = 10.0  # the longest wait between two attempts while the log cannot be read (clicks wait, none lost)
CLICK_COLUMNS = "seq, user_id, clicked_item AS item_id, clean, orphan, ts"
WAITING_QUERY = f"SELECT {CLICK_COLUMNS} FROM feedback_checked WHERE seq = ANY($1::bigint[])"


@dataclass
class Stream:
    """One table's new (listener, item) rows after a sequence value, read in pages with an overlap.

    ``checked``: the rows also carry ``clean``, ``orphan`` and ``ts`` (clicks, from ``feedback_checked``)."""

    name: str
    query: str  # $1: after this seq, $2: page size, $3: not before this time; returns seq, user_id, item_id
    checked: bool = False
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
            f"SELECT {CLICK_COLUMNS} FROM feedback_checked "
            "WHERE seq > $1 AND clicked_item IS NOT NULL AND ts >= $3 ORDER BY seq LIMIT $2",
            checked=True,
        ),
        Stream("plays", "SELECT seq, user_id, item_id FROM plays WHERE seq > $1 AND ts >= $3 ORDER BY seq LIMIT $2"),
    ]


class ItemPositions(Protocol):
    """External item id -> column (``serving.lookup.SortedIds``; a dict in tests)."""

    def get(self, key: str, /) -> int | None: ...


class FeedbackPoller(threading.Thread):
    """Polls new clicks and plays every ``interval_s`` and hands (listener, item index) pairs to ``on_plays``.

    Events on items the published model does not know are skipped (a new release reaches the catalogue through a
    publish, not here), and so are events before ``since``: a version trained on the log until then already holds
    them in its history, and folding them in again would count them twice. Survives database outages and a bad
    URL (logged once, retried with a backoff from ``retry_s`` to ``MAX_RETRY_S``); :meth:`stop` ends it.
    """

    def __init__(
        self,
        dsn: str,
        item_index: ItemPositions,
        on_plays: Callable[[list[tuple[str, int]]], object],
        *,
        since: datetime | None = None,
        interval_s: float = 0.1,
        orphan_grace_s: float = ORPHAN_GRACE_S,
        retry_s: float = 1.0,
    ) -> None:
        super().__init__(name="feedback-poller", daemon=True)
        self.dsn, self.item_index, self.on_plays, self.interval_s = dsn, item_index, on_plays, interval_s
        self.since = since or datetime(1970, 1, 1, tzinfo=UTC)
        self.orphan_grace = timedelta(seconds=orphan_grace_s)
        self.waiting: dict[int, datetime] = {}  # seq -> ts of orphan clicks that may yet become clean
        self._stopping = threading.Event()
        self.streams = streams()
        self.polls = 0
        self.retry_s = retry_s
        self.failures = 0  # attempts failed in a row (0 while the log is readable)

    def stop(self) -> None:
        self._stopping.set()
        self.join(5)

    def run(self) -> None:
        asyncio.run(self._loop())

    def _admit(self, row: asyncpg.Record, now: datetime) -> bool:
        """Whether a checked row is folded in now; an orphan young enough waits (re-checked at every poll)."""
        if row["clean"]:
            self.waiting.pop(row["seq"], None)
            return True
        if row["orphan"] and now - row["ts"] < self.orphan_grace:
            if row["seq"] not in self.waiting and len(self.waiting) >= MAX_WAITING:
                del self.waiting[min(self.waiting)]
            self.waiting[row["seq"]] = row["ts"]
        else:
            self.waiting.pop(row["seq"], None)  # flagged for good (not shown, mismatch) or waited too long
        return False

    async def _recheck(self, conn: asyncpg.Connection) -> None:
        """The orphan clicks that wait: folded in once clean, dropped once too old."""
        if not self.waiting:
            return
        now = datetime.now(UTC)
        rows = await conn.fetch(WAITING_QUERY, list(self.waiting))
        found = {row["seq"] for row in rows}
        for seq in [s for s in self.waiting if s not in found]:  # deleted meanwhile
            del self.waiting[seq]
        self._hand_on([row for row in rows if self._admit(row, now)], "clicks")

    def _hand_on(self, rows: list[asyncpg.Record], name: str) -> None:
        plays = []
        for row in rows:
            item = self.item_index.get(row["item_id"])
            if item is not None:
                plays.append((row["user_id"], item))
        if plays:
            try:
                self.on_plays(plays)
            except Exception:  # a bad refold must not end live fold-in for the life of this version
                log.exception("live fold-in: refolding %d %s failed; skipped", len(plays), name)

    async def _poll(self, conn: asyncpg.Connection, stream: Stream) -> bool:
        """Reads one page of ``stream``; True when the page was full (more is waiting)."""
        rows = await conn.fetch(stream.query, max(stream.last_seq - OVERLAP, 0), PAGE, self.since)
        now = datetime.now(UTC)
        fresh = [row for row in rows if stream.fresh(row["seq"])]
        self._hand_on([row for row in fresh if not stream.checked or self._admit(row, now)], stream.name)
        return len(rows) == PAGE

    async def _loop(self) -> None:
        """Polls until stopped. Any failure (an outage, a refused login, a URL asyncpg cannot parse: a ValueError)
        is logged once, when it starts, and retried with a backoff doubling up to ``MAX_RETRY_S``; the recovery is
        logged too. The thread never dies of it: this version keeps serving, without live fold-in meanwhile."""
        conn: asyncpg.Connection | None = None
        delay = self.retry_s
        while not self._stopping.is_set():
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(self.dsn, timeout=5, command_timeout=10)
                more = [await self._poll(conn, stream) for stream in self.streams]
                await self._recheck(conn)
                self.polls += 1
                if self.failures:
                    failed, self.failures, delay = self.failures, 0, self.retry_s
                    log.info("live fold-in: the log is readable again (after %d failed attempts)", failed)
                if not any(more):
                    await asyncio.sleep(self.interval_s)
            except Exception as exc:  # whatever it is, the poller retries rather than dying
                self.failures += 1
                if self.failures == 1:
                    expected = isinstance(exc, _EXPECTED)
                    log.warning(
                        "live fold-in: the log is not readable (%s: %s); retrying every %g-%g s, quietly",
                        type(exc).__name__,
                        _without_password(str(exc), self.dsn),
                        self.retry_s,
                        MAX_RETRY_S,
                        exc_info=not expected,  # a bug shows its traceback, once
                    )
                if conn is not None:
                    conn.terminate()
                conn = None
                await self._pause(delay)
                delay = min(2 * delay, MAX_RETRY_S)
        if conn is not None:
            await conn.close()

    async def _pause(self, seconds: float) -> None:
        """Sleeps ``seconds`` in short steps, so that :meth:`stop` is not kept waiting by a long backoff."""
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set() and (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 0.1))


#: The failures a database outage or a bad URL raises (logged without a traceback).
_EXPECTED = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    ValueError,
    TypeError,
    ArithmeticError,
)


def _without_password(text: str, dsn: str) -> str:
    """``text`` without the URL's password (``recsys.core.dsn`` is out of reach here: serving imports numpy only)."""
    try:
        password = urllib.parse.urlsplit(dsn).password
    except ValueError:  # the URL does not parse: hide all of it
        return text.replace(dsn, "<RECSYS_DATABASE_URL>")
    text = text.replace(dsn, "<RECSYS_DATABASE_URL>")
    for secret in {password, urllib.parse.unquote(password or "")} - {None, ""}:
        text = text.replace(str(secret), "***")
    return text
