"""An ``event_id`` names one event: the same id with other content is refused (409), not silently dropped.

Feedback and plays carry a client's idempotency key. A resend with the same content is a retry (acknowledged again,
stored once); with other content it is a client bug, which the writer makes visible. What counts as the content is
what the event says happened, the same fields the gateway derives a missing key from (``gateway.service``):
feedback's listener, group, request, click and skips (not its measured ``inference_time_ms`` nor the server's
``ts``); a play's listener, item and time (not ``ms_played``: a player may report a longer duration again). Its
digest is stored with the row (migration 0006).

Where a conflict is found, since the spool acknowledges before the database has the event:

1. at intake, against the events of this writer's spool not yet in the database (:class:`SpooledKeys`, rebuilt
   from the spool after a restart) and, when the database is up, against the stored rows: answered 409 with the
   conflicting ids, nothing of the batch is spooled;
2. at write time, for what intake could not see (another writer replica took the other content at the same
   moment, or the database was down and the id is older than the spool): the row already stored wins, the later
   event is set aside in the dead-letter file and counted as ``feedback_events_rejected{reason="conflict"}``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import orjson

#: Event kind -> the fields that make its content (kinds without a client key are not checked).
CONTENT: dict[str, tuple[str, ...]] = {
    "feedback": ("user_id", "group", "request_id", "clicked_item", "skipped_items"),
    "play": ("user_id", "item_id", "ts_ms"),
}

Key = tuple[str, str]  # (kind, event_id)


def digest(event: dict[str, Any]) -> bytes | None:
    """16 bytes of SHA-256 over the event's content; None for a kind without a client key (impressions)."""
    fields = CONTENT.get(event["kind"])
    if fields is None:
        return None
    content = [event["kind"], *(event.get(f) for f in fields)]
    return hashlib.sha256(orjson.dumps(content)).digest()[:16]


def keyed(events: Iterable[dict[str, Any]]) -> list[tuple[Key, bytes]]:
    """(key, digest) of every event that has a client key."""
    out = []
    for event in events:
        d = digest(event)
        if d is not None:
            out.append(((event["kind"], event["event_id"]), d))
    return out


def keyed_payloads(payloads: Iterable[bytes]) -> list[tuple[Key, bytes]]:
    return keyed(orjson.loads(p) for p in payloads)


class SpooledKeys:
    """The keys and digests of events spooled but not yet in the database (counted: a retry spooled twice is
    released twice), plus those claimed by a request in flight."""

    def __init__(self) -> None:
        self._held: dict[Key, tuple[bytes, int]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def conflicts(self, items: list[tuple[Key, bytes]]) -> list[str]:
        """Ids among ``items`` held with another digest, or given twice with two digests in ``items`` itself."""
        seen: dict[Key, bytes] = {}
        found = []
        for key, d in items:
            held = self._held.get(key)
            other = seen.setdefault(key, d)
            if (held is not None and held[0] != d) or other != d:
                found.append(key[1])
        return sorted(set(found))

    def claim(self, items: list[tuple[Key, bytes]]) -> None:
        for key, d in items:
            held = self._held.get(key)
            self._held[key] = (d, 1) if held is None else (held[0], held[1] + 1)

    def release(self, items: list[tuple[Key, bytes]]) -> None:
        for key, _ in items:
            held = self._held.get(key)
            if held is None:
                continue
            if held[1] <= 1:
                del self._held[key]
            else:
                self._held[key] = (held[0], held[1] - 1)
