"""Delivery of impressions, feedback and plays from the gateway to the feedback writer (HTTP, JSON).

Two promises, deliberately different:
- feedback (and a batch of plays, in one post) is forwarded before the client gets its 202, and the writer
  acknowledges only once the events are in its fsync'd spool, so an acknowledged click or play is never lost; a
  writer that does not ack in time -> 503, client retries with the same ``event_id`` and the writer stores it once;
- impressions are queued in memory and sent in batches off the request path (the hot path must not wait on the
  writer), every 250 ms or 2,000 impressions: each HTTP post costs about as much gateway CPU as a few dozen
  recommendations, so small batches showed up as a tenth of the gateway's CPU under load. They are retried while
  the writer is down, up to ``max_buffer`` events, past which they are counted in
  ``gateway_impressions_dropped_total`` rather than growing without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import httpx
import orjson

from gateway.metrics import GatewayMetrics
from recsys.core.errors import RecsysError

log = logging.getLogger(__name__)


class WriterUnavailableError(RecsysError):
    """The writer did not acknowledge in time (down, slow or failing)."""


class WriterRejectedError(RecsysError):
    """The writer refused the event as invalid; ``message`` says why."""


class WriterConflictError(WriterRejectedError):
    """The writer holds an event of this ``event_id`` with other content (409); ``message`` names the ids."""


class EventSink:
    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        metrics: GatewayMetrics,
        batch_size: int = 2000,
        interval_s: float = 0.25,
        max_buffer: int = 100_000,
        token: str = "",
    ) -> None:
        # the writer's intake token (RECSYS_FEEDBACK_TOKEN) on every request
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(base_url=base_url, timeout=timeout_s, headers=headers)
        self._metrics = metrics
        self._batch_size = batch_size
        self._interval_s = interval_s
        self._max_buffer = max_buffer
        self._buffer: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._flush_loop(), name="impression-flush")

    async def close(self, drain_timeout_s: float = 5.0) -> None:
        """Stops the flush loop after one last attempt to deliver what is buffered."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(WriterUnavailableError, WriterRejectedError):
            await asyncio.wait_for(self._send_buffer(), drain_timeout_s)
        await self._client.aclose()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def record_impression(self, impression: dict[str, Any]) -> None:
        if len(self._buffer) >= self._max_buffer:
            self._metrics.impressions_dropped.inc()
            return
        self._buffer.append(impression)
        if len(self._buffer) >= self._batch_size:
            self._wake.set()

    async def send_feedback(self, event: dict[str, Any]) -> None:
        await self._post([event])

    async def send_events(self, events: list[dict[str, Any]]) -> None:
        """Events the client waits on (a batch of plays): returns once the writer has all of them on disk."""
        await self._post(events)

    async def writer_ready(self) -> bool:
        try:
            return (await self._client.get("/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def _post(self, events: list[dict[str, Any]]) -> None:
        try:
            response = await self._client.post(
                "/events", content=orjson.dumps({"events": events}), headers={"content-type": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise WriterUnavailableError(f"feedback writer unreachable: {type(exc).__name__}") from None
        if response.status_code == 202:
            return
        if response.status_code in (401, 403):  # our token is missing or wrong: nothing the client can fix
            log.error("the feedback writer refused the gateway's intake token: %s", _error_message(response))
            raise WriterUnavailableError("feedback writer refused the gateway's credentials")
        if response.status_code == 409:
            raise WriterConflictError(_error_message(response))
        if 400 <= response.status_code < 500:
            raise WriterRejectedError(_error_message(response))
        raise WriterUnavailableError(f"feedback writer answered {response.status_code}")

    async def _send_buffer(self) -> None:
        while self._buffer:
            batch = self._buffer[: self._batch_size]
            try:
                await self._post(batch)
            except WriterRejectedError as exc:  # a gateway bug, not a transient failure: do not retry forever
                log.error("writer rejected %d impressions: %s", len(batch), exc)
            del self._buffer[: len(batch)]

    async def _flush_loop(self) -> None:
        backoff = self._interval_s
        while True:
            if backoff > self._interval_s:  # the writer failed: wait it out, full buffers do not wake us
                await asyncio.sleep(backoff)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), backoff)
            self._wake.clear()
            try:
                await self._send_buffer()
                backoff = self._interval_s
            except WriterUnavailableError as exc:
                backoff = min(2.0, backoff * 2)
                log.warning("impressions wait for the writer (%d buffered): %s", len(self._buffer), exc)


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body.get("error", {}).get("message") or body)
    except ValueError:
        return response.text[:200]
