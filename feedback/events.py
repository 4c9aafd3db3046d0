"""The events the writer accepts (validated again here: the writer trusts no caller, the gateway included)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, TypeAdapter

Id = Annotated[StrictStr, Field(min_length=1, max_length=256, pattern=r"^[^\x00]+$")]  # PostgreSQL text has no NUL
Seconds = Annotated[StrictFloat | StrictInt, Field(ge=0, le=4e9)]
Millis = Annotated[StrictFloat | StrictInt, Field(ge=0, le=3.6e6)]


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


Event = Annotated[Impression | Feedback, Field(discriminator="kind")]


class EventBatch(_Event):
    events: Annotated[list[Event], Field(min_length=1, max_length=10_000)]


BATCH = TypeAdapter(EventBatch)
