"""``/readyz``: ready means every model of the experiment answers a real inference, not only that Triton says its
models are loaded. A killed python-backend stub leaves its model "ready" in Triton's eyes while every request
through the ensemble fails; one small probe per model (an unknown listener, top 1: every step of the ensemble
runs) sees it. Probes are shared and cached for ``ttl_s``, so frequent probing (kubelet, load balancers, NGINX)
costs at most one inference per model per ``ttl_s``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from recsys.core.triton_client import AsyncTritonRecommender, TritonCallError

#: The listener id of a probe: unknown to every model, so it takes the cold-start path through each step.
PROBE_USER = "readiness-probe"


class ModelProbe:
    def __init__(self, triton: AsyncTritonRecommender, models: tuple[str, ...], *, ttl_s: float = 1.0) -> None:
        self.triton = triton
        self.models = models
        self.ttl_s = ttl_s
        self._checked_at = -float("inf")
        self._state: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    async def state(self) -> dict[str, Any]:
        """``{"triton": bool, "models": {name: answers}, "problems": {name: why}}``, at most ``ttl_s`` old."""
        async with self._lock:  # concurrent probes wait for the one under way instead of starting their own
            if time.monotonic() - self._checked_at >= self.ttl_s:
                self._state = await self._probe()
                self._checked_at = time.monotonic()
            return self._state

    async def _probe(self) -> dict[str, Any]:
        loaded = await self.triton.ready(self.models)
        answers = await asyncio.gather(*(self._infer(model) for model in self.models))
        problems = {
            model: problem if loaded.get(model) else "not loaded"
            for model, problem in zip(self.models, answers, strict=True)
            if problem or not loaded.get(model)
        }
        return {
            "triton": loaded[""],
            "models": {model: model not in problems for model in self.models},
            "problems": problems,
        }

    async def _infer(self, model: str) -> str | None:
        """None when the model answered, else why not."""
        try:
            await self.triton.recommend(model, [PROBE_USER], 1)
        except TritonCallError as exc:
            return f"inference failed ({exc.status}): {str(exc)[:200]}"
        return None
