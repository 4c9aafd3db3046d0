"""Request limits, in one place: the gateway checks them (``gateway.service``, the REST schema and so the OpenAPI
document), the feedback writer checks them again (``feedback.events``: it trusts no caller), the settings are
bounded by them, and the gateway's event batches are sized from the writer's body cap (issue 14).

``MAX_TOP_K`` lives in :mod:`serving.contract` (the Triton stubs read it and may not import ``recsys``); it is
re-exported here so that every other layer takes it from one module.
"""

from __future__ import annotations

from typing import Final

from serving.contract import MAX_TOP_K

__all__ = [
    "EVENT_BATCH_MAX_BYTES",
    "MAX_EVENTS_PER_POST",
    "MAX_GROUP_CHARS",
    "MAX_ID_CHARS",
    "MAX_IMPRESSION_BYTES",
    "MAX_INFERENCE_TIME_MS",
    "MAX_MS_PLAYED",
    "MAX_PLAYS_PER_REQUEST",
    "MAX_SKIPPED_ITEMS",
    "MAX_TOP_K",
    "PLAYS_MAX_BODY_BYTES",
    "PLAY_MAX_FUTURE_MS",
    "PLAY_TS_MIN_MS",
    "WRITER_CLOCK_SLACK_MS",
    "WRITER_MAX_BODY_BYTES",
]

# ------------------------------------------------------------------------------------------ fields of an event
#: Every id (user, item, request, event): PostgreSQL text, bounded so that a list of them stays small.
MAX_ID_CHARS: Final = 256
#: Items skipped in one feedback event: no more than one served list holds.
MAX_SKIPPED_ITEMS: Final = MAX_TOP_K
#: A group name (gateway.experiment.GroupName allows no longer); the service takes only the experiment's names.
MAX_GROUP_CHARS: Final = 32
#: A client's measured latency of one list: up to one hour, inclusive.
MAX_INFERENCE_TIME_MS: Final = 3_600_000

# ------------------------------------------------------------------------------------------------------- plays
#: Plays per request: a player flushes what it buffered while offline in a few requests, and one request is one
#: writer round trip and one fsync, acknowledged or refused as a whole.
MAX_PLAYS_PER_REQUEST: Final = 100
#: The body cap of ``POST /plays`` (gateway and NGINX; other routes keep RECSYS_MAX_BODY_BYTES, 16 KiB): a full batch
#: with every id at MAX_ID_CHARS ASCII characters is about 85 KB of JSON, so a valid batch is never refused for its
#: size, while the cap stays small enough to read into memory at once.
PLAYS_MAX_BODY_BYTES: Final = 128 * 1024
#: The accepted window of a play's time: from 2000-01-01T00:00:00Z (no earlier play can exist; epoch seconds sent
#: as milliseconds land in 1970) to this far past the gateway's clock (players' clocks drift; microseconds sent as
#: milliseconds land centuries ahead).
PLAY_TS_MIN_MS: Final = 946_684_800_000
PLAY_MAX_FUTURE_MS: Final = 5 * 60 * 1000
#: The writer accepts a play this much later still, so that a writer on another host whose clock is a little behind
#: never refuses a play the gateway has just accepted.
WRITER_CLOCK_SLACK_MS: Final = 60 * 1000
#: The longest play: one day (mixes and podcasts run for hours; the column is a 32-bit integer of milliseconds).
MAX_MS_PLAYED: Final = 24 * 3600 * 1000

# ------------------------------------------------------------------------------ the gateway -> writer posts
#: The writer's cap on one ``POST /events`` body (413 past it, from the Content-Length alone).
WRITER_MAX_BODY_BYTES: Final = 8 * 1024 * 1024
#: Events in one post (the writer refuses more with 422).
MAX_EVENTS_PER_POST: Final = 10_000
#: What the gateway puts in one post at most: three quarters of the writer's cap, so that a writer configured a
#: little tighter, or a proxy's framing, still leaves room. 2,000 impressions of 300 items are 8.9 MiB: a full
#: batch by count alone was refused (413) and, before this cap, never delivered.
EVENT_BATCH_MAX_BYTES: Final = WRITER_MAX_BODY_BYTES * 3 // 4
#: The largest impression the request limits allow: MAX_TOP_K items of MAX_ID_CHARS characters, each character at
#: most 6 bytes of JSON (``\\u001f``), plus the other fields. Below EVENT_BATCH_MAX_BYTES, so that no list the
#: gateway's input validation lets through can be too large to post on its own.
MAX_IMPRESSION_BYTES: Final = (MAX_TOP_K + 4) * (MAX_ID_CHARS * 6 + 3) + 4096
