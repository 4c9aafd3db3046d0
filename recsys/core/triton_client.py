"""A typed gRPC client for the served ensembles (blocking and asyncio), speaking Triton's KServe v2 protocol
through its generated stubs (``tritonclient.grpc.service_pb2*``) directly.

Requests are built as protobuf with raw tensor bytes and responses read with ``numpy.frombuffer``: the
gateway makes one call per request on its hot path, and tritonclient's generic ``InferInput``/``InferResult``
layer measured as a large share of the gateway's CPU per request. The blocking and the asyncio client share the
request builder, the response parser and the error translation.

Triton errors become :class:`TritonCallError` with the gRPC status name kept, so callers can tell a bad request
(``INVALID_ARGUMENT``) from an unavailable server (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``).

The project's Triton restricts every API but health to holders of a key (``--grpc-restricted-protocol``,
``recsys.stack.triton.config``): both clients send it on every call when given one (``api_key``; the gateway's
``RECSYS_TRITON_API_KEY``) as gRPC metadata (``recsys.core.triton_key``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from recsys.core.errors import RecsysError
from recsys.core.triton_key import key_metadata
from serving.contract import FALLBACK, ITEM_IDS, MAX_BATCH_SIZE, MODEL_VERSION, SCORES, TOP_K, USER_ID

#: gRPC reconnects with exponential backoff up to 120 s by default; a gateway must notice a restarted Triton at once.
RECONNECT_CHANNEL_ARGS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
_OUTPUTS = (ITEM_IDS, SCORES, FALLBACK, MODEL_VERSION)


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


def encode_bytes_tensor(values: list[str]) -> bytes:
    """KServe v2 BYTES tensor contents: each element as a 4-byte little-endian length, then its UTF-8 bytes."""
    out = bytearray()
    for value in values:
        data = value.encode()
        out += len(data).to_bytes(4, "little")
        out += data
    return bytes(out)


def decode_bytes_tensor(raw: bytes) -> list[str]:
    items, offset = [], 0
    while offset < len(raw):
        length = int.from_bytes(raw[offset : offset + 4], "little")
        items.append(raw[offset + 4 : offset + 4 + length].decode())
        offset += 4 + length
    return items


def build_request(model: str, user_ids: list[str], top_k: int, request_id: str = "") -> service_pb2.ModelInferRequest:
    """``request_id`` becomes Triton's request id (in its traces and verbose log): the gateway's request ids."""
    n = len(user_ids)
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    users = request.inputs.add(name=USER_ID, datatype="BYTES")
    users.shape.extend((n, 1))
    k = request.inputs.add(name=TOP_K, datatype="INT64")
    k.shape.extend((n, 1))
    request.raw_input_contents.extend((encode_bytes_tensor(user_ids), np.full(n, top_k, dtype="<i8").tobytes()))
    for name in _OUTPUTS:
        request.outputs.add(name=name)
    return request


def parse_response(response: service_pb2.ModelInferResponse, user_ids: list[str], model: str) -> list[Recommendation]:
    raw = {out.name: data for out, data in zip(response.outputs, response.raw_output_contents, strict=True)}
    missing = [name for name in _OUTPUTS if name not in raw]
    if missing:
        raise TritonCallError(f"{model} answered without {', '.join(missing)}", "INTERNAL")
    n = len(user_ids)
    scores = np.frombuffer(raw[SCORES], dtype="<f4").reshape(n, -1)
    ids = decode_bytes_tensor(raw[ITEM_IDS])
    width = scores.shape[1]
    fallback = np.frombuffer(raw[FALLBACK], dtype=np.bool_)
    version = np.frombuffer(raw[MODEL_VERSION], dtype="<i8")
    out = []
    for row, user in enumerate(user_ids):
        keep = np.flatnonzero(np.isfinite(scores[row]))
        row_ids = ids[row * width : (row + 1) * width]
        out.append(
            Recommendation(
                user_id=user,
                item_ids=[row_ids[i] for i in keep],
                scores=scores[row, keep].tolist(),
                fallback=bool(fallback[row]),
                model=model,
                model_version=int(version[row]),
            )
        )
    return out


def _chunks(user_ids: list[str]) -> list[list[str]]:
    if not user_ids:
        raise TritonCallError("no user ids given", "INVALID_ARGUMENT")
    return [user_ids[i : i + MAX_BATCH_SIZE] for i in range(0, len(user_ids), MAX_BATCH_SIZE)]


@contextlib.contextmanager
def _translated_errors() -> Iterator[None]:
    """gRPC errors become ours, keeping the status name (e.g. INVALID_ARGUMENT, UNAVAILABLE)."""
    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else None
        raise TritonCallError(details or str(exc), code.name if code is not None else None) from exc


class TritonRecommender:
    """Blocking client: one channel for the object's lifetime; ``api_key`` goes with every call."""

    def __init__(self, url: str, *, timeout_s: float = 5.0, api_key: str | None = None) -> None:
        self._channel = grpc.insecure_channel(url, options=RECONNECT_CHANNEL_ARGS)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self.timeout_s = timeout_s
        self._metadata = key_metadata(api_key)

    def recommend(self, model: str, user_ids: list[str], top_k: int = 10) -> list[Recommendation]:
        """One call per ``MAX_BATCH_SIZE`` users (the ensembles' batch limit)."""
        out: list[Recommendation] = []
        for chunk in _chunks(user_ids):
            with _translated_errors():
                response = self._stub.ModelInfer(
                    build_request(model, chunk, top_k), timeout=self.timeout_s, metadata=self._metadata
                )
            out += parse_response(response, chunk, model)
        return out

    def close(self) -> None:
        self._channel.close()


class AsyncTritonRecommender:
    """asyncio client over one long-lived channel (what the gateway holds); ``api_key`` goes with every call."""

    def __init__(self, url: str, *, timeout_s: float = 5.0, api_key: str | None = None) -> None:
        self._channel = grpc.aio.insecure_channel(url, options=RECONNECT_CHANNEL_ARGS)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self.timeout_s = timeout_s
        self._metadata = key_metadata(api_key)

    async def recommend(
        self, model: str, user_ids: list[str], top_k: int = 10, request_id: str = ""
    ) -> list[Recommendation]:
        out: list[Recommendation] = []
        for chunk in _chunks(user_ids):
            with _translated_errors():
                response = await self._stub.ModelInfer(
                    build_request(model, chunk, top_k, request_id), timeout=self.timeout_s, metadata=self._metadata
                )
            out += parse_response(response, chunk, model)
        return out

    async def ready(self, models: tuple[str, ...]) -> dict[str, bool]:
        """Readiness of the server (key ``""``) and of each model; an unreachable server is simply not ready."""
        try:
            with _translated_errors():
                server = await self._stub.ServerReady(
                    service_pb2.ServerReadyRequest(), timeout=self.timeout_s, metadata=self._metadata
                )
                state = {"": bool(server.ready)}
                for model in models:
                    answer = await self._stub.ModelReady(
                        service_pb2.ModelReadyRequest(name=model), timeout=self.timeout_s, metadata=self._metadata
                    )
                    state[model] = bool(answer.ready)
        except TritonCallError:
            state = {"": False} | dict.fromkeys(models, False)
        return state

    async def close(self) -> None:
        await self._channel.close()
