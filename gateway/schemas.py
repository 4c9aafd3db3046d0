"""REST bodies (pydantic): what the OpenAPI document shows and what the gateway accepts; same fields as protos/."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictFloat, StrictInt, StrictStr, Tag

from recsys.core.limits import (
    MAX_GROUP_CHARS,
    MAX_ID_CHARS,
    MAX_INFERENCE_TIME_MS,
    MAX_MS_PLAYED,
    MAX_PLAYS_PER_REQUEST,
    MAX_SKIPPED_ITEMS,
    PLAY_MAX_FUTURE_MS,
    PLAY_TS_MIN_MS,
)

# No NUL: PostgreSQL text cannot store it, so it is refused here rather than lost later.
Id = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[^\x00]+$")]
UserId = Annotated[StrictInt | Id, Field(description="listener id, an integer or a string (compared as text)")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RecommendRequest(_Body):
    user_id: UserId
    # The upper bound is the running gateway's max_top_k setting: gateway.rest puts it into the OpenAPI document.
    top_k: StrictInt | None = Field(None, ge=1, description="items wanted, 1..max_top_k (1000 by default); 10 if unset")


class RecommendedItem(_Body):
    item_id: str
    score: float = Field(description="higher is better; what it measures is the list's score_kind")


class RecommendResponse(_Body):
    recommended_items: list[RecommendedItem]
    group: str = Field(description="the listener's A/B group")
    model: str = Field(description="the Triton model that answered")
    model_version: str
    request_id: str = Field(description="quote it in /feedback")
    inference_time_ms: float = Field(description="the Triton call as the gateway saw it")
    fallback: bool = Field(description="true when the popularity fallback answered (unknown listener)")
    score_kind: Literal["model", "play_count"] = Field(
        description="what the scores of this list are: `model`, the model's affinity of listener and item (a dot "
        "product of factors, e.g. ~0.8 for a good ALS match; comparable within a list and across lists of one model "
        "version); `play_count`, "
        "the popularity fallback's plays of the item in the training data (raw counts such as 358.0: comparable "
        "within the list only, never with model scores)"
    )


class FeedbackRequest(_Body):
    user_id: UserId
    group: Annotated[StrictStr, Field(min_length=1, max_length=MAX_GROUP_CHARS, pattern=r"^[^\x00]+$")]
    request_id: Id
    clicked_item: Id | None = None
    skipped_items: list[Id] = Field(default_factory=list, max_length=MAX_SKIPPED_ITEMS)
    # StrictFloat takes JSON integers too (not booleans or strings); a union with StrictInt would hide the bounds
    # from the OpenAPI document (pydantic writes them as "ge"/"le" keys no client reads).
    inference_time_ms: Annotated[StrictFloat, Field(ge=0, le=MAX_INFERENCE_TIME_MS)] | None = None
    event_id: Id | None = Field(None, description="idempotency key; derived from the content when absent")


class FeedbackResponse(_Body):
    event_id: str
    status: Literal["accepted"] = "accepted"


class Play(_Body):
    """One organic play from the listener's player; the same fields as ``recsys.v1.Play``."""

    user_id: UserId
    item_id: Id
    ts_ms: StrictInt = Field(
        ge=PLAY_TS_MIN_MS,
        description=f"when the play began, epoch milliseconds (client clock): from 2000-01-01 to at most "
        f"{PLAY_MAX_FUTURE_MS // 60_000} minutes past the gateway's clock (later: 400)",
    )
    ms_played: StrictInt | None = Field(
        None, ge=0, le=MAX_MS_PLAYED, description="how long it played (ms, up to one day); absent = unknown"
    )
    event_id: Id | None = Field(None, description="idempotency key; from user_id, item_id and ts_ms when absent")


class PlayBatch(_Body):
    plays: list[Play] = Field(min_length=1, max_length=MAX_PLAYS_PER_REQUEST)


def _plays_shape(body: Any) -> str:
    """A body with a ``plays`` field is a batch, anything else one play: the errors then name one shape's fields,
    not both shapes' (a plain union would report a single play's mistakes next to "plays: field required")."""
    return "batch" if isinstance(body, dict) and "plays" in body else "play"


#: ``POST /plays`` takes one play or ``{"plays": [...]}``.
PlaysRequest = Annotated[Annotated[Play, Tag("play")] | Annotated[PlayBatch, Tag("batch")], Discriminator(_plays_shape)]


class PlaysResponse(_Body):
    accepted: int = Field(description="plays acknowledged (on the writer's disk)")
    event_ids: list[str] = Field(description="the key of each play, in request order (retries with it store once)")
    status: Literal["accepted"] = "accepted"


class ErrorDetail(_Body):
    code: str
    message: str


class ErrorResponse(_Body):
    error: ErrorDetail
