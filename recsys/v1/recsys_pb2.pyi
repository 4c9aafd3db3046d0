from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "top_k")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    top_k: int
    def __init__(self, user_id: _Optional[str] = ..., top_k: _Optional[int] = ...) -> None: ...

class RecommendedItem(_message.Message):
    __slots__ = ("item_id", "score")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("recommended_items", "group", "model", "model_version", "request_id", "inference_time_ms", "fallback")
    RECOMMENDED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    recommended_items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    group: str
    model: str
    model_version: str
    request_id: str
    inference_time_ms: float
    fallback: bool
    def __init__(self, recommended_items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., group: _Optional[str] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., request_id: _Optional[str] = ..., inference_time_ms: _Optional[float] = ..., fallback: bool = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("user_id", "group", "request_id", "clicked_item", "skipped_items", "inference_time_ms", "event_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CLICKED_ITEM_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    group: str
    request_id: str
    clicked_item: str
    skipped_items: _containers.RepeatedScalarFieldContainer[str]
    inference_time_ms: float
    event_id: str
    def __init__(self, user_id: _Optional[str] = ..., group: _Optional[str] = ..., request_id: _Optional[str] = ..., clicked_item: _Optional[str] = ..., skipped_items: _Optional[_Iterable[str]] = ..., inference_time_ms: _Optional[float] = ..., event_id: _Optional[str] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("event_id",)
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    def __init__(self, event_id: _Optional[str] = ...) -> None: ...

class Play(_message.Message):
    __slots__ = ("user_id", "item_id", "ts_ms", "ms_played", "event_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TS_MS_FIELD_NUMBER: _ClassVar[int]
    MS_PLAYED_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: str
    ts_ms: int
    ms_played: int
    event_id: str
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., ts_ms: _Optional[int] = ..., ms_played: _Optional[int] = ..., event_id: _Optional[str] = ...) -> None: ...

class PlaysRequest(_message.Message):
    __slots__ = ("plays",)
    PLAYS_FIELD_NUMBER: _ClassVar[int]
    plays: _containers.RepeatedCompositeFieldContainer[Play]
    def __init__(self, plays: _Optional[_Iterable[_Union[Play, _Mapping]]] = ...) -> None: ...

class PlaysResponse(_message.Message):
    __slots__ = ("accepted", "event_ids")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    event_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, accepted: _Optional[int] = ..., event_ids: _Optional[_Iterable[str]] = ...) -> None: ...
