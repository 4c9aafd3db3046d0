"""Request coalescing against the real Triton: concurrent requests share calls, each gets its own answer."""

from __future__ import annotations

import asyncio

import pytest

from gateway.coalesce import Coalescer
from recsys.core.triton_client import AsyncTritonRecommender, Recommendation, TritonCallError, build_request
from recsys.stack.local import LocalStack

pytestmark = pytest.mark.stack


def test_concurrent_requests_share_calls_and_get_their_own_answers(stack: LocalStack) -> None:
    users = [str(u) for u in range(1, 61)] + ["nobody-knows-me"]

    async def run() -> tuple[list[Recommendation], list[Recommendation], int]:
        triton = AsyncTritonRecommender(
            f"127.0.0.1:{stack.config.ports.triton_grpc}", timeout_s=10, api_key=stack.triton_key
        )
        coalescer = Coalescer(triton, max_in_flight=1, timeout_s=10)
        try:
            together = await asyncio.gather(*(coalescer.recommend("recsys_b", u, 5) for u in users))
            alone = [(await triton.recommend("recsys_b", [u], 5))[0] for u in users]
        finally:
            await triton.close()
        return list(together), alone, coalescer.calls

    together, alone, calls = asyncio.run(run())
    assert calls < len(users) / 5  # 61 requests, one call in flight: a handful of batched calls
    assert [r.item_ids for r in together] == [r.item_ids for r in alone]
    assert [r.user_id for r in together] == users
    assert together[-1].fallback
    assert not together[0].fallback


def test_a_request_queued_behind_a_dead_server_fails_within_its_deadline() -> None:
    async def run() -> float:
        triton = AsyncTritonRecommender("127.0.0.1:9", timeout_s=0.3)  # nothing listens on port 9
        coalescer = Coalescer(triton, max_in_flight=1, timeout_s=0.3)
        loop = asyncio.get_running_loop()
        start = loop.time()
        results = await asyncio.gather(*(coalescer.recommend("m", str(u), 5) for u in range(5)), return_exceptions=True)
        await triton.close()
        assert all(isinstance(r, TritonCallError) for r in results), results
        return loop.time() - start

    assert asyncio.run(run()) < 1.0


class IdsSeen(AsyncTritonRecommender):
    """The real client, noting the request id each Triton call carried."""

    seen: list[str]

    async def recommend(
        self, model: str, user_ids: list[str], top_k: int = 10, request_id: str = ""
    ) -> list[Recommendation]:
        self.seen.append(request_id)
        return await super().recommend(model, user_ids, top_k, request_id)


def test_each_triton_call_carries_the_request_ids_it_serves(stack: LocalStack) -> None:
    assert build_request("recsys_b", ["1"], 5, "trace-1").id == "trace-1"  # Triton's own request id field

    async def run() -> list[str]:
        triton = IdsSeen(f"127.0.0.1:{stack.config.ports.triton_grpc}", timeout_s=10, api_key=stack.triton_key)
        triton.seen = []
        coalescer = Coalescer(triton, max_in_flight=1, timeout_s=10)
        try:
            await asyncio.gather(*(coalescer.recommend("recsys_b", str(u), 5, f"req-{u}") for u in range(1, 21)))
        finally:
            await triton.close()
        return triton.seen

    seen = asyncio.run(run())
    assert sorted(i for call in seen for i in call.split(",")) == sorted(f"req-{u}" for u in range(1, 21))
    assert len(seen) < 20  # shared calls carry several ids
