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

A post of impressions is also capped by its size (``EVENT_BATCH_MAX_BYTES``, three quarters of the writer's body
cap; issue 14: 2,000 lists of 300 items are 8.9 MiB, which the writer refuses with 413 and a closed connection,
seen here as the writer down: the post was retried forever and every impression queued behind it). A post the
writer still refuses (413, 422 for one bad event among many, or a connection cut off while sending) is split in
halves and resent, so that only an impression the writer refuses on its own is dropped (logged). One impression
too large to post alone is refused when it is recorded (:meth:`EventSink.record_impression`).
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
from recsys.core.limits import EVENT_BATCH_MAX_BYTES

log = logging.getLogger(__name__)

_HEAD, _TAIL = b'{"events":[', b"]}"  # a post's body around its comma-separated events


class WriterUnavailableError(RecsysError):
    """The writer did not acknowledge in time (down, slow or failing). ``cut_off``: the connection broke during the
    exchange, which is also how a writer refuses a body over its cap before reading it (413, then it closes while
    the client still sends, so the client sees a broken connection, not the 413)."""

    def __init__(self, message: str, *, cut_off: bool = False) -> None:
        super().__init__(message)
        self.cut_off = cut_off


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
        max_batch_bytes: int = EVENT_BATCH_MAX_BYTES,
        interval_s: float = 0.25,
        max_buffer: int = 100_000,
        token: str = "",
    ) -> None:
        # the writer's intake token (RECSYS_FEEDBACK_TOKEN) on every request
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(base_url=base_url, timeout=timeout_s, headers=headers)
        self._metrics = metrics
        self._batch_size = batch_size
        self._max_batch_bytes = max_batch_bytes
        self._interval_s = interval_s
        self._max_buffer = max_buffer
        self._buffer: list[bytes] = []  # impressions, each serialized once, when recorded
        self._buffered_bytes = 0
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
        with contextlib.suppress(WriterUnavailableError, WriterRejectedError, TimeoutError):
            await asyncio.wait_for(self._send_buffer(), drain_timeout_s)
        await self._client.aclose()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def record_impression(self, impression: dict[str, Any]) -> bool:
        """Queues a served list for the writer; False (nothing queued) when it is too large to post on its own,
        which the request limits rule out (``MAX_IMPRESSION_BYTES``): the caller refuses the request then."""
        encoded = orjson.dumps(impression)
        if len(_HEAD) + len(encoded) + len(_TAIL) > self._max_batch_bytes:
            log.error("impression of %d bytes refused: over a post's %d bytes", len(encoded), self._max_batch_bytes)
            return False
        if len(self._buffer) >= self._max_buffer:
            self._metrics.impressions_dropped.inc()
            return True
        self._buffer.append(encoded)
        self._buffered_bytes += len(encoded) + 1
        if len(self._buffer) >= self._batch_size or self._buffered_bytes >= self._max_batch_bytes:
            self._wake.set()
        return True

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
        await self._post_body(orjson.dumps({"events": events}))

    async def _post_body(self, body: bytes) -> None:
        try:
            response = await self._client.post("/events", content=body, headers={"content-type": "application/json"})
        except httpx.HTTPError as exc:
            cut_off = isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError)
            message = f"feedback writer unreachable: {type(exc).__name__}"
            raise WriterUnavailableError(message, cut_off=cut_off) from None
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

    def _next_batch(self, most: int) -> int:
        """How many buffered impressions the next post takes: up to ``most``, within ``max_batch_bytes``."""
        size, n = len(_HEAD) + len(_TAIL), 0
        for encoded in self._buffer[:most]:
            size += len(encoded) + (1 if n else 0)
            if n and size > self._max_batch_bytes:
                break
            n += 1
        return n

    async def _send_buffer(self) -> None:
        """Posts the buffer in batches; a refused batch is halved until the writer takes it, or is one impression
        (then dropped and logged: a gateway bug, not a transient failure, so it is not retried forever)."""
        most = self._batch_size
        while self._buffer:
            n = self._next_batch(most)
            try:
                await self._post_body(_HEAD + b",".join(self._buffer[:n]) + _TAIL)
            except WriterUnavailableError as exc:
                if not (exc.cut_off and n > 1):  # down or slow: the buffer waits (the flush loop backs off)
                    raise
                most = n // 2  # perhaps refused as too large: halves cost a few posts if the writer is only flaky
                log.warning("writer cut off a post of %d impressions (%s): resending them in halves", n, exc)
                continue
            except WriterRejectedError as exc:
                if n > 1:
                    most = n // 2
                    log.warning("writer refused %d impressions (%s): resending them in halves", n, exc)
                    continue
                log.error("writer rejected an impression, dropped: %s", exc)
            self._buffered_bytes -= sum(len(e) + 1 for e in self._buffer[:n])
            del self._buffer[:n]
            most = min(self._batch_size, most * 2)

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
