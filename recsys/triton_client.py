"""A typed gRPC client for the served ensembles (sync and asyncio), over ``tritonclient``.

The gateway and the demo call Triton through this; integration tests use it beside raw ``tritonclient`` calls.
Triton errors become :class:`TritonCallError` with Triton's status code kept, so callers can tell a bad request
(``StatusCode.INVALID_ARGUMENT``) from an unavailable server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
from tritonclient.utils import InferenceServerException

from trainer.errors import RecsysError
from trainer.tensor_names import FALLBACK, ITEM_IDS, MAX_BATCH_SIZE, MODEL_VERSION, SCORES, TOP_K, USER_ID


class TritonCallError(RecsysError):
    """A Triton inference call failed; ``status`` is the gRPC status name Triton gave (e.g. INVALID_ARGUMENT)."""

    def __init__(self, message: str, status: str | None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Recommendation:
    user_id: str
    item_ids: list[str]
    scores: list[float]
    fallback: bool
    model: str
    model_version: int


def _inputs(module: Any, user_ids: list[str], top_k: int) -> list[Any]:
    users = module.InferInput(USER_ID, [len(user_ids), 1], "BYTES")
    users.set_data_from_numpy(np.array([[u.encode()] for u in user_ids], dtype=object))
    k = module.InferInput(TOP_K, [len(user_ids), 1], "INT64")
    k.set_data_from_numpy(np.full((len(user_ids), 1), top_k, dtype=np.int64))
    return [users, k]


def _outputs(module: Any) -> list[Any]:
    return [module.InferRequestedOutput(name) for name in (ITEM_IDS, SCORES, FALLBACK, MODEL_VERSION)]


def _parse(result: Any, user_ids: list[str], model: str) -> list[Recommendation]:
    ids, scores = result.as_numpy(ITEM_IDS), result.as_numpy(SCORES)
    fallback, version = result.as_numpy(FALLBACK), result.as_numpy(MODEL_VERSION)
    out = []
    for row, user in enumerate(user_ids):
        keep = np.isfinite(scores[row])
        out.append(
            Recommendation(
                user_id=user,
                item_ids=[i.decode() for i in ids[row][keep]],
                scores=[float(s) for s in scores[row][keep]],
                fallback=bool(fallback[row, 0]),
                model=model,
                model_version=int(version[row, 0]),
            )
        )
    return out


def _chunks(user_ids: list[str]) -> list[list[str]]:
    if not user_ids:
        raise TritonCallError("no user ids given", "INVALID_ARGUMENT")
    return [user_ids[i : i + MAX_BATCH_SIZE] for i in range(0, len(user_ids), MAX_BATCH_SIZE)]


def _request(module: Any, model: str, chunk: list[str], top_k: int, timeout_s: float) -> dict[str, Any]:
    """Keyword arguments of one ``infer`` call, the same for the blocking and the asyncio client."""
    return {
        "model_name": model,
        "inputs": _inputs(module, chunk, top_k),
        "outputs": _outputs(module),
        "client_timeout": timeout_s,
    }


@contextlib.contextmanager
def _translated_errors() -> Iterator[None]:
    """tritonclient's exception becomes ours, keeping Triton's status name (e.g. INVALID_ARGUMENT)."""
    try:
        yield
    except InferenceServerException as exc:
        status = exc.status()
        name = str(status).rsplit(".", 1)[-1] if status else None
        raise TritonCallError(exc.message() or str(exc), name) from exc


class TritonRecommender:
    """Blocking client: one channel for the object's lifetime."""

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        self._client = grpcclient.InferenceServerClient(url)
        self.timeout_s = timeout_s

    def recommend(self, model: str, user_ids: list[str], top_k: int = 10) -> list[Recommendation]:
        """One call per ``MAX_BATCH_SIZE`` users (the ensembles' batch limit)."""
        out: list[Recommendation] = []
        for chunk in _chunks(user_ids):
            with _translated_errors():
                result = self._client.infer(**_request(grpcclient, model, chunk, top_k, self.timeout_s))
            out += _parse(result, chunk, model)
        return out

    def close(self) -> None:
        self._client.close()


#: gRPC reconnects with exponential backoff up to 120 s by default; a gateway must notice a restarted Triton at once.
RECONNECT_CHANNEL_ARGS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class AsyncTritonRecommender:
    """asyncio client over one long-lived channel (what the gateway holds)."""

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        self._client = grpcclient_aio.InferenceServerClient(url, channel_args=RECONNECT_CHANNEL_ARGS)
        self.timeout_s = timeout_s

    async def ready(self, models: tuple[str, ...]) -> dict[str, bool]:
        """Readiness of the server (key ``""``) and of each model; an unreachable server is simply not ready."""
        try:
            with _translated_errors():
                state = {"": bool(await self._client.is_server_ready(client_timeout=self.timeout_s))}
                for model in models:
                    state[model] = bool(await self._client.is_model_ready(model, client_timeout=self.timeout_s))
        except TritonCallError:
            state = {"": False} | dict.fromkeys(models, False)
        return state

    async def recommend(self, model: str, user_ids: list[str], top_k: int = 10) -> list[Recommendation]:
        out: list[Recommendation] = []
        for chunk in _chunks(user_ids):
            with _translated_errors():
                result = await self._client.infer(**_request(grpcclient_aio, model, chunk, top_k, self.timeout_s))
            out += _parse(result, chunk, model)
        return out

    async def close(self) -> None:
        await self._client.close()
