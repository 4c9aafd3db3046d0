"""The events the writer accepts (validated again here: the writer trusts no caller, the gateway included), with
the gateway's limits (:mod:`recsys.core.limits`, one source for both)."""

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

from recsys.core.limits import (
    MAX_EVENTS_PER_POST,
    MAX_GROUP_CHARS,
    MAX_ID_CHARS,
    MAX_INFERENCE_TIME_MS,
    MAX_MS_PLAYED,
    MAX_SKIPPED_ITEMS,
    MAX_TOP_K,
    PLAY_TS_MIN_MS,
    WRITER_CLOCK_SLACK_MS,
)
from recsys.core.limits import PLAY_MAX_FUTURE_MS as GATEWAY_PLAY_MAX_FUTURE_MS

Id = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[^\x00]+$")]  # text has no NUL
Group = Annotated[StrictStr, Field(min_length=1, max_length=MAX_GROUP_CHARS, pattern=r"^[^\x00]+$")]
Seconds = Annotated[StrictFloat | StrictInt, Field(ge=0, le=4e9)]
Millis = Annotated[StrictFloat | StrictInt, Field(ge=0, le=MAX_INFERENCE_TIME_MS)]

#: A play's time may be this far past the writer's clock: the gateway's window plus a minute, so that a writer on
#: another host whose clock is a little behind never refuses a play the gateway has just accepted.
PLAY_MAX_FUTURE_MS = GATEWAY_PLAY_MAX_FUTURE_MS + WRITER_CLOCK_SLACK_MS


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Impression(_Event):
    kind: Literal["impression"]
    request_id: Id
    ts: Seconds
    user_id: Id
    group: Group
    model: Id
    model_version: Annotated[StrictInt, Field(ge=0)]
    items: Annotated[list[Id], Field(max_length=MAX_TOP_K)]
    latency_ms: Millis
    fallback: StrictBool


class Feedback(_Event):
    kind: Literal["feedback"]
    event_id: Id
    ts: Seconds
    request_id: Id
    user_id: Id
    group: Group
    clicked_item: Id | None = None
    skipped_items: Annotated[list[Id], Field(max_length=MAX_SKIPPED_ITEMS)] = []
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
    events: Annotated[list[Event], Field(min_length=1, max_length=MAX_EVENTS_PER_POST)]


BATCH = TypeAdapter(EventBatch)
