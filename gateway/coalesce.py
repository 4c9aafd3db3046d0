"""Opportunistic request coalescing in front of Triton.

While ``max_in_flight`` calls are under way, new requests for the same (model, top_k) wait and leave together in
the next call, up to the ensembles' batch limit. There is no timer: a request that finds a free slot leaves at
once, so a quiet gateway (concurrency 1) adds no delay, and under load one gRPC call and one pass through the
ensemble's python-backend steps serve many listeners. Measured on 2 cores (benchmarks/gateway_overhead.py),
it is what lets the gateway keep up with Triton's own throughput rather than spend the CPU on per-request hops.

Every waiting request still has its own deadline (``timeout_s``); an error of a shared call reaches every
request of that call (only server-side failures can happen there: ids and top_k are checked before).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque

from recsys.core.triton_client import AsyncTritonRecommender, Recommendation, TritonCallError
from serving.contract import MAX_BATCH_SIZE

Key = tuple[str, int]  # (model, top_k)
Waiting = tuple[str, str, "asyncio.Future[Recommendation]"]  # (user id, request id, answer)


class Coalescer:
    def __init__(
        self,
        triton: AsyncTritonRecommender,
        *,
        max_in_flight: int = 2,
        max_batch: int = MAX_BATCH_SIZE,
        timeout_s: float = 0.5,
    ) -> None:
        self.triton = triton
        self.max_in_flight = max_in_flight
        self.max_batch = max_batch
        self.timeout_s = timeout_s
        self._queues: OrderedDict[Key, deque[Waiting]] = OrderedDict()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()  # strong references: the loop keeps only weak ones
        self.calls = 0  # Triton calls made (tests and benchmarks read it beside the request count)

    async def recommend(self, model: str, user_id: str, top_k: int, request_id: str = "") -> Recommendation:
        """``request_id`` is passed to Triton: a shared call carries the ids of all its requests, comma-separated."""
        future: asyncio.Future[Recommendation] = asyncio.get_running_loop().create_future()
        self._queues.setdefault((model, top_k), deque()).append((user_id, request_id, future))
        self._dispatch()
        try:
            return await asyncio.wait_for(future, self.timeout_s)
        except TimeoutError:
            message = f"no answer from {model} within {self.timeout_s * 1000:.0f} ms"
            raise TritonCallError(message, "DEADLINE_EXCEEDED") from None

    def _dispatch(self) -> None:
        """Starts calls while slots are free, oldest waiting (model, k) first."""
        while self._in_flight < self.max_in_flight and self._queues:
            key, queue = next(iter(self._queues.items()))
            batch: list[Waiting] = []
            while queue and len(batch) < self.max_batch:
                waiting = queue.popleft()
                if not waiting[2].done():  # a request that timed out or was cancelled while waiting
                    batch.append(waiting)
            if not queue:
                del self._queues[key]
            else:
                self._queues.move_to_end(key)
            if batch:
                self._in_flight += 1
                self.calls += 1
                task = asyncio.get_running_loop().create_task(self._call(key, batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _call(self, key: Key, batch: list[Waiting]) -> None:
        model, top_k = key
        try:
            request_ids = ",".join(request_id for _, request_id, _ in batch if request_id)
            answers = await self.triton.recommend(model, [user_id for user_id, _, _ in batch], top_k, request_ids)
        except Exception as exc:  # a malformed answer too: its requests fail now, not at their deadline
            error = exc if isinstance(exc, TritonCallError) else TritonCallError(f"{model}: {exc}", "INTERNAL")
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(error)
        else:
            for (_, _, future), answer in zip(batch, answers, strict=True):
                if not future.done():
                    future.set_result(answer)
        finally:
            self._in_flight -= 1
            self._dispatch()
