"""The events the writer accepts (validated again here: the writer trusts no caller, the gateway included)."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    field_validator,
)

Id = Annotated[StrictStr, Field(min_length=1, max_length=256, pattern=r"^[^\x00]+$")]  # PostgreSQL text has no NUL
Seconds = Annotated[StrictFloat | StrictInt, Field(ge=0, le=4e9)]
Millis = Annotated[StrictFloat | StrictInt, Field(ge=0, le=3.6e6)]

#: The accepted window of a play's time, as the gateway's (``gateway/service.py``; the layers may not share code):
#: from 2000-01-01T00:00:00Z to the gateway's 5 minutes past the clock plus one minute, so that a writer on another
#: host whose clock is a little behind never refuses a play the gateway has just accepted.
PLAY_TS_MIN_MS = 946_684_800_000
PLAY_MAX_FUTURE_MS = 6 * 60 * 1000
MAX_MS_PLAYED = 24 * 3600 * 1000  # one day; the column is an integer (2^31 ms is 24.8 days)


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Impression(_Event):
    kind: Literal["impression"]
    request_id: Id
    ts: Seconds
    user_id: Id
    group: Annotated[StrictStr, Field(min_length=1, max_length=32, pattern=r"^[^\x00]+$")]
    model: Id
    model_version: Annotated[StrictInt, Field(ge=0)]
    items: Annotated[list[Id], Field(max_length=1000)]
    latency_ms: Millis
    fallback: StrictBool


class Feedback(_Event):
    kind: Literal["feedback"]
    event_id: Id
    ts: Seconds
    request_id: Id
    user_id: Id
    group: Annotated[StrictStr, Field(min_length=1, max_length=32, pattern=r"^[^\x00]+$")]
    clicked_item: Id | None = None
    skipped_items: Annotated[list[Id], Field(max_length=1000)] = []
    inference_time_ms: Millis | None = None


class Play(_Event):
    """An organic play from the listener's player (table ``plays``); ``ts_ms`` is the client's epoch ms."""

    kind: Literal["play"]
    event_id: Id
    ts_ms: Annotated[StrictInt, Field(ge=PLAY_TS_MIN_MS)]
    user_id: Id
    item_id: Id
    ms_played: Annotated[StrictInt, Field(ge=0, le=MAX_MS_PLAYED)] | None = None

    @field_validator("ts_ms")
    @classmethod
    def _not_in_the_future(cls, ts_ms: int) -> int:
        """Checked at intake only: a spooled play replayed days later is not re-validated, so it cannot expire."""
        if ts_ms > time.time() * 1000 + PLAY_MAX_FUTURE_MS:
            raise ValueError(f"ts_ms is more than {PLAY_MAX_FUTURE_MS // 1000} s in the future")
        return ts_ms


Event = Annotated[Impression | Feedback | Play, Field(discriminator="kind")]


class EventBatch(_Event):
    events: Annotated[list[Event], Field(min_length=1, max_length=10_000)]


BATCH = TypeAdapter(EventBatch)
