"""gRPC transport (grpc.aio): the ``recsys.v1.Recommender`` service over the same service layer as REST."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from gateway.service import FeedbackEvent, GatewayError, GatewayService, PlayEvent
from recsys.v1 import recsys_pb2, recsys_pb2_grpc

T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]

#: Requests are counted with the HTTP status of the same outcome, so ``server_error_rate`` covers both transports.
_HTTP_STATUS = {grpc.StatusCode.OK: "200", grpc.StatusCode.INVALID_ARGUMENT: "400", grpc.StatusCode.UNAVAILABLE: "503"}


def _metadata(context: Context, key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


class RecommenderServicer(recsys_pb2_grpc.RecommenderServicer):
    def __init__(self, service: GatewayService) -> None:
        self.service = service

    async def _counted(self, route: str, context: Context, call: Callable[[], Awaitable[T]]) -> T:
        start, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            return await call()
        except GatewayError as exc:
            code = grpc.StatusCode.INVALID_ARGUMENT if exc.kind == "invalid" else grpc.StatusCode.UNAVAILABLE
            if exc.retry_after_s is not None:
                context.set_trailing_metadata((("retry-after", str(exc.retry_after_s)),))
            await context.abort(code, exc.message)
            raise  # abort raises; this line only satisfies the type checker
        except Exception:
            code = grpc.StatusCode.INTERNAL
            raise
        finally:
            metrics = self.service.metrics
            metrics.requests.labels(route, "GRPC", _HTTP_STATUS.get(code, "500")).inc()
            metrics.request_duration_ms.labels(route).observe((time.perf_counter() - start) * 1000.0)

    async def Recommend(  # noqa: N802 (generated name)
        self, request: recsys_pb2.RecommendRequest, context: Context
    ) -> recsys_pb2.RecommendResponse:
        async def call() -> recsys_pb2.RecommendResponse:
            result = await self.service.recommend(
                request.user_id, request.top_k or None, header_group=_metadata(context, "x-ab-group")
            )
            return recsys_pb2.RecommendResponse(
                recommended_items=[
                    recsys_pb2.RecommendedItem(item_id=i, score=s)
                    for i, s in zip(result.item_ids, result.scores, strict=True)
                ],
                group=result.group,
                model=result.model,
                model_version=result.model_version,
                request_id=result.request_id,
                inference_time_ms=result.inference_time_ms,
                fallback=result.fallback,
            )

        return await self._counted("grpc/Recommend", context, call)

    async def Feedback(  # noqa: N802 (generated name)
        self, request: recsys_pb2.FeedbackRequest, context: Context
    ) -> recsys_pb2.FeedbackResponse:
        async def call() -> recsys_pb2.FeedbackResponse:
            event_id = await self.service.feedback(
                FeedbackEvent(
                    user_id=request.user_id,
                    group=request.group,
                    request_id=request.request_id,
                    clicked_item=request.clicked_item if request.HasField("clicked_item") else None,
                    skipped_items=tuple(request.skipped_items),
                    # proto3 presence: 0.0 is a latency, an unset field is none (as REST's null)
                    inference_time_ms=request.inference_time_ms if request.HasField("inference_time_ms") else None,
                    event_id=request.event_id or None,
                )
            )
            return recsys_pb2.FeedbackResponse(event_id=event_id)

        return await self._counted("grpc/Feedback", context, call)

    async def Plays(  # noqa: N802 (generated name)
        self, request: recsys_pb2.PlaysRequest, context: Context
    ) -> recsys_pb2.PlaysResponse:
        async def call() -> recsys_pb2.PlaysResponse:
            event_ids = await self.service.plays(
                [
                    PlayEvent(
                        user_id=play.user_id,
                        item_id=play.item_id,
                        ts_ms=play.ts_ms,  # unset is 0, 1970: refused by the service's time window
                        ms_played=play.ms_played if play.HasField("ms_played") else None,
                        event_id=play.event_id or None,
                    )
                    for play in request.plays
                ]
            )
            return recsys_pb2.PlaysResponse(accepted=len(event_ids), event_ids=event_ids)

        return await self._counted("grpc/Plays", context, call)


def add_to_server(server: grpc.aio.Server, service: GatewayService) -> None:
    recsys_pb2_grpc.add_RecommenderServicer_to_server(RecommenderServicer(service), server)  # type: ignore[no-untyped-call]
