"""The one service layer behind both transports: REST (``gateway.rest``) and gRPC (``gateway.grpc_api``) only
translate to and from these calls and map :class:`GatewayError` onto their status codes."""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.coalesce import Coalescer
from gateway.events import EventSink, WriterConflictError, WriterRejectedError, WriterUnavailableError
from gateway.experiment import Experiment
from gateway.metrics import GatewayMetrics
from gateway.readiness import ModelProbe
from recsys.core.errors import RecsysError
from recsys.core.limits import (
    MAX_ID_CHARS,
    MAX_INFERENCE_TIME_MS,
    MAX_MS_PLAYED,
    MAX_PLAYS_PER_REQUEST,
    MAX_SKIPPED_ITEMS,
    MAX_TOP_K,
    PLAY_MAX_FUTURE_MS,
    PLAY_TS_MIN_MS,
)
from recsys.core.triton_client import AsyncTritonRecommender, TritonCallError

log = logging.getLogger(__name__)

# The limits of every field a client sends come from recsys.core.limits, one source for the REST schema
# (gateway.schemas, and so the OpenAPI document), the checks below (both transports), the writer's own checks
# (feedback/events.py) and the settings; a test compares the document with what the service enforces.
#: ``X-Request-Id``: what NGINX's ``$request_id`` (32 hex digits), UUIDs and common tracing ids look like; nothing
#: that could break a log line or a header.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class GatewayError(RecsysError):
    """A request the gateway cannot answer; ``kind`` decides the HTTP and gRPC status."""

    def __init__(self, kind: str, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind  # "invalid" (400/INVALID_ARGUMENT), "conflict" (409/ALREADY_EXISTS) or "unavailable" (503)
        self.message = message
        self.retry_after_s = retry_after_s

    @classmethod
    def invalid(cls, message: str) -> GatewayError:
        return cls("invalid", message)

    @classmethod
    def unavailable(cls, message: str, retry_after_s: int = 1) -> GatewayError:
        return cls("unavailable", message, retry_after_s=retry_after_s)


@dataclass(frozen=True)
class RecommendResult:
    item_ids: list[str]
    scores: list[float]
    group: str
    model: str
    model_version: str
    request_id: str
    inference_time_ms: float
    fallback: bool

    @property
    def score_kind(self) -> str:
        """What the scores are: the model's affinities, or the fallback's play counts (not comparable to those)."""
        return "play_count" if self.fallback else "model"


@dataclass(frozen=True)
class FeedbackEvent:
    user_id: str
    group: str
    request_id: str
    clicked_item: str | None
    skipped_items: tuple[str, ...]
    inference_time_ms: float | None = None
    event_id: str | None = None


@dataclass(frozen=True)
class PlayEvent:
    """One organic play from the listener's player (not a click on a recommendation)."""

    user_id: str
    item_id: str
    ts_ms: int  # when the play began, client clock, epoch milliseconds
    ms_played: int | None = None
    event_id: str | None = None


def derived_play_id(play: PlayEvent) -> str:
    """The key of a play sent without one: who played what, when. ``ms_played`` is left out on purpose: a player that
    reports the same play again with a longer duration must not store it twice (the first report is kept)."""
    content = ["play", play.user_id, play.item_id, play.ts_ms]
    return hashlib.sha256(orjson.dumps(content)).hexdigest()[:32]


def derived_event_id(event: FeedbackEvent) -> str:
    """The idempotency key of an event that came without one: a retry of the same event maps to the same key."""
    content = [event.user_id, event.group, event.request_id, event.clicked_item, list(event.skipped_items)]
    return hashlib.sha256(orjson.dumps(content)).hexdigest()[:32]


def request_id_of(value: str) -> str:
    """The client's request id when it sent one (checked), else a new one."""
    if not value:
        return uuid.uuid4().hex
    if REQUEST_ID_PATTERN.fullmatch(value) is None:
        raise GatewayError.invalid("X-Request-Id must be 1 to 64 characters of A-Z a-z 0-9 . _ : -")
    return value


def _check_id(name: str, value: str) -> None:
    if not value.strip():  # Triton refuses blank ids too, and would fail a whole coalesced call for one
        raise GatewayError.invalid(f"{name} must not be empty")
    if len(value) > MAX_ID_CHARS:
        raise GatewayError.invalid(f"{name} is longer than {MAX_ID_CHARS} characters")
    if "\x00" in value:
        raise GatewayError.invalid(f"{name} must not contain NUL characters")


class GatewayService:
    def __init__(
        self,
        *,
        experiment: Experiment,
        triton: AsyncTritonRecommender,
        events: EventSink,
        coalescer: Coalescer | None = None,
        metrics: GatewayMetrics,
        default_top_k: int = 10,
        max_top_k: int = MAX_TOP_K,
    ) -> None:
        self.experiment = experiment
        self.triton = triton
        self.coalescer = coalescer or Coalescer(triton, timeout_s=triton.timeout_s)
        self.events = events
        self.metrics = metrics
        self.default_top_k = default_top_k
        self.max_top_k = max_top_k
        self.probe = ModelProbe(triton, experiment.models)

    def group_for(self, key: str, header_group: str | None = None) -> str:
        """The listener's group by the experiment's hash of ``key``.

        A group header (NGINX's ``X-AB-Group``) naming no group of the experiment is refused; one that names another
        group than the hash is counted in ``ab_group_mismatch_total`` and overridden: the config is the truth, so a
        spoofed or stale header can never pick a variant.
        """
        computed = self.experiment.assign(key)
        if header_group:
            if header_group not in self.experiment.group_names:
                known = ", ".join(self.experiment.group_names)
                raise GatewayError.invalid(f"unknown group {header_group[:40]!r}: the experiment has {known}")
            if header_group != computed:
                self.metrics.group_mismatch.inc()
        return computed

    async def recommend(
        self,
        user_id: str,
        top_k: int | None = None,
        *,
        group_key: str | None = None,
        header_group: str | None = None,
        request_id: str | None = None,
    ) -> RecommendResult:
        """``request_id`` (the client's ``X-Request-Id``, checked by :func:`request_id_of`) keys the served list;
        a new one when absent."""
        _check_id("user_id", user_id)
        k = top_k or self.default_top_k
        if not 1 <= k <= self.max_top_k:
            raise GatewayError.invalid(f"top_k must be between 1 and {self.max_top_k}, got {k}")
        group = self.group_for(group_key or user_id, header_group)
        model = self.experiment.model_of(group)
        request_id = request_id or uuid.uuid4().hex
        start = time.perf_counter()
        try:
            rec = await self.coalescer.recommend(model, user_id, k, request_id)
        except TritonCallError as exc:
            if exc.status == "INVALID_ARGUMENT":
                raise GatewayError.invalid(str(exc)) from None
            log.warning("Triton call to %s failed (%s): %s", model, exc.status, exc)
            raise GatewayError.unavailable(f"recommendation model {model} is unavailable ({exc.status})") from None
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        self.metrics.inference_latency_ms.labels(group, model).observe(elapsed_ms)
        self.metrics.impressions.labels(group).inc()
        if rec.fallback:
            self.metrics.fallbacks.labels(group).inc()
        result = RecommendResult(
            item_ids=rec.item_ids,
            scores=rec.scores,
            group=group,
            model=model,
            model_version=str(rec.model_version),
            request_id=request_id,
            inference_time_ms=round(elapsed_ms, 3),
            fallback=rec.fallback,
        )
        recorded = self.events.record_impression(
            {
                "kind": "impression",
                "request_id": result.request_id,
                "ts": time.time(),
                "user_id": user_id,
                "group": group,
                "model": model,
                "model_version": rec.model_version,
                "items": rec.item_ids,
                "latency_ms": result.inference_time_ms,
                "fallback": rec.fallback,
            }
        )
        if not recorded:  # ruled out by the limits above (MAX_IMPRESSION_BYTES): never served unrecorded
            raise GatewayError.invalid(f"the list of {len(rec.item_ids)} items is too large to record: ask for fewer")
        return result

    async def feedback(self, event: FeedbackEvent) -> str:
        """Forwards one event to the writer; returns its idempotency key once the writer has durably accepted it."""
        for name in ("user_id", "request_id"):
            _check_id(name, getattr(event, name))
        if event.group not in self.experiment.group_names:
            known = ", ".join(self.experiment.group_names)
            raise GatewayError.invalid(f"unknown group {event.group[:40]!r}: the experiment has {known}")
        if event.clicked_item is None and not event.skipped_items:
            raise GatewayError.invalid("feedback needs a clicked_item or skipped_items")
        if len(event.skipped_items) > MAX_SKIPPED_ITEMS:
            raise GatewayError.invalid(f"at most {MAX_SKIPPED_ITEMS} skipped_items per event")
        for item in (event.clicked_item, *event.skipped_items):
            if item is not None:
                _check_id("item id", item)
        if event.event_id is not None:
            _check_id("event_id", event.event_id)
        if event.inference_time_ms is not None and not 0 <= event.inference_time_ms <= MAX_INFERENCE_TIME_MS:
            raise GatewayError.invalid(f"inference_time_ms must be between 0 and {MAX_INFERENCE_TIME_MS} (one hour)")
        event_id = event.event_id or derived_event_id(event)
        payload: dict[str, Any] = {
            "kind": "feedback",
            "event_id": event_id,
            "ts": time.time(),
            "user_id": event.user_id,
            "group": event.group,
            "request_id": event.request_id,
            "clicked_item": event.clicked_item,
            "skipped_items": list(event.skipped_items),
            "inference_time_ms": event.inference_time_ms,
        }
        try:
            await self.events.send_feedback(payload)
        except WriterUnavailableError as exc:
            raise GatewayError.unavailable(f"feedback is not accepted right now: {exc}") from None
        except WriterConflictError as exc:  # the event_id is stored with other content: a client bug, made visible
            raise GatewayError("conflict", str(exc)) from None
        except WriterRejectedError as exc:
            raise GatewayError.invalid(str(exc)) from None
        if event.clicked_item is not None:
            self.metrics.clicks.labels(event.group).inc()
        if event.skipped_items:
            self.metrics.skips.labels(event.group).inc(len(event.skipped_items))
        return event_id

    async def plays(self, plays: Sequence[PlayEvent]) -> list[str]:
        """Forwards a batch of organic plays to the writer in one call; returns their keys, in order, once the writer
        has them on disk (all or none: a refused or unanswered batch is retried whole, and stored once)."""
        if not 1 <= len(plays) <= MAX_PLAYS_PER_REQUEST:
            raise GatewayError.invalid(f"send 1 to {MAX_PLAYS_PER_REQUEST} plays per request, got {len(plays)}")
        now_ms = int(time.time() * 1000)
        payloads: list[dict[str, Any]] = []
        for n, play in enumerate(plays):
            where = f"plays[{n}]." if len(plays) > 1 else ""
            _check_id(f"{where}user_id", play.user_id)
            _check_id(f"{where}item_id", play.item_id)
            if play.event_id is not None:
                _check_id(f"{where}event_id", play.event_id)
            if not PLAY_TS_MIN_MS <= play.ts_ms <= now_ms + PLAY_MAX_FUTURE_MS:
                raise GatewayError.invalid(
                    f"{where}ts_ms {play.ts_ms} is not a play time: epoch milliseconds from 2000-01-01 to at most "
                    f"{PLAY_MAX_FUTURE_MS // 60_000} minutes from now ({now_ms})"
                )
            if play.ms_played is not None and not 0 <= play.ms_played <= MAX_MS_PLAYED:
                raise GatewayError.invalid(f"{where}ms_played must be between 0 and {MAX_MS_PLAYED} (one day)")
            payloads.append(
                {
                    "kind": "play",
                    "event_id": play.event_id or derived_play_id(play),
                    "ts_ms": play.ts_ms,
                    "user_id": play.user_id,
                    "item_id": play.item_id,
                    "ms_played": play.ms_played,
                }
            )
        try:
            await self.events.send_events(payloads)
        except WriterUnavailableError as exc:
            raise GatewayError.unavailable(f"plays are not accepted right now: {exc}") from None
        except WriterConflictError as exc:
            raise GatewayError("conflict", str(exc)) from None
        except WriterRejectedError as exc:
            raise GatewayError.invalid(str(exc)) from None
        self.metrics.plays.inc(len(payloads))
        return [p["event_id"] for p in payloads]

    async def readiness(self) -> dict[str, Any]:
        """Ready = Triton up and every model of the experiment answering a real inference (``gateway.readiness``);
        the writer's state is reported beside it."""
        state = await self.probe.state()
        return {
            "ready": state["triton"] and all(state["models"].values()),
            **state,
            "feedback_writer": await self.events.writer_ready(),
            "impressions_pending": self.events.pending,
        }
