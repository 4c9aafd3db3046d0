"""REST bodies (pydantic): what the OpenAPI document shows and what the gateway accepts; same fields as protos/."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from gateway.service import MAX_ID_CHARS, MAX_SKIPPED_ITEMS

# No NUL: PostgreSQL text cannot store it, so it is refused here rather than lost later.
Id = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[^\x00]+$")]
UserId = Annotated[StrictInt | Id, Field(description="listener id, an integer or a string (compared as text)")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RecommendRequest(_Body):
    user_id: UserId
    top_k: StrictInt | None = Field(None, ge=1, description="items wanted, 1..max_top_k (1000 by default); 10 if unset")


class RecommendedItem(_Body):
    item_id: str
    score: float


class RecommendResponse(_Body):
    recommended_items: list[RecommendedItem]
    group: str = Field(description="the listener's A/B group")
    model: str = Field(description="the Triton model that answered")
    model_version: str
    request_id: str = Field(description="quote it in /feedback")
    inference_time_ms: float = Field(description="the Triton call as the gateway saw it")
    fallback: bool = Field(description="true when the popularity fallback answered (unknown listener)")


class FeedbackRequest(_Body):
    user_id: UserId
    group: Annotated[StrictStr, Field(min_length=1, max_length=32, pattern=r"^[^\x00]+$")]
    request_id: Id
    clicked_item: Id | None = None
    skipped_items: list[Id] = Field(default_factory=list, max_length=MAX_SKIPPED_ITEMS)
    inference_time_ms: Annotated[StrictFloat | StrictInt, Field(ge=0, le=3.6e6)] | None = None
    event_id: Id | None = Field(None, description="idempotency key; derived from the content when absent")


class FeedbackResponse(_Body):
    event_id: str
    status: Literal["accepted"] = "accepted"


class ErrorDetail(_Body):
    code: str
    message: str


class ErrorResponse(_Body):
    error: ErrorDetail
