"""gRPC transport (grpc.aio): the ``recsys.v1.Recommender`` service over the same service layer as REST.

Requests arrive as bytes and are parsed here rather than by grpc's deserializer: a message that does not parse
(garbage, a string field that is not UTF-8) then gets INVALID_ARGUMENT with a message, where a failing deserializer
gives the client a bare UNKNOWN. ``x-request-id`` metadata plays the part of REST's ``X-Request-Id`` header.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from gateway.service import FeedbackEvent, GatewayError, GatewayService, PlayEvent, request_id_of
from recsys.core import logs
from recsys.v1 import recsys_pb2, recsys_pb2_grpc

T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]

#: Requests are counted with the HTTP status of the same outcome, so ``server_error_rate`` covers both transports.
_HTTP_STATUS = {grpc.StatusCode.OK: "200", grpc.StatusCode.INVALID_ARGUMENT: "400", grpc.StatusCode.UNAVAILABLE: "503",
                grpc.StatusCode.ALREADY_EXISTS: "409"}  # fmt: skip
_CODES = {"invalid": grpc.StatusCode.INVALID_ARGUMENT, "conflict": grpc.StatusCode.ALREADY_EXISTS}


def _metadata(context: Context, key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


class RecommenderServicer(recsys_pb2_grpc.RecommenderServicer):
    def __init__(self, service: GatewayService) -> None:
        self.service = service

    async def _counted(self, route: str, context: Context, call: Callable[[str], Awaitable[T]]) -> T:
        """Runs ``call(request_id)``: counted, timed, the request id in the logs and the trailing metadata."""
        start, code = time.perf_counter(), grpc.StatusCode.OK
        request_id = request_id_of("")
        token = logs.request_id.set(request_id)
        trailing: tuple[tuple[str, str], ...] = ()
        try:
            request_id = request_id_of(_metadata(context, "x-request-id") or "")
            logs.request_id.set(request_id)
            trailing = (("x-request-id", request_id),)
            context.set_trailing_metadata(trailing)
            return await call(request_id)
        except GatewayError as exc:
            code = _CODES.get(exc.kind, grpc.StatusCode.UNAVAILABLE)
            if exc.retry_after_s is not None:
                trailing += (("retry-after", str(exc.retry_after_s)),)
            context.set_trailing_metadata(trailing)
            await context.abort(code, exc.message)
            raise  # abort raises; this line only satisfies the type checker
        except Exception:
            code = grpc.StatusCode.INTERNAL
            raise
        finally:
            metrics = self.service.metrics
            metrics.requests.labels(route, "GRPC", _HTTP_STATUS.get(code, "500")).inc()
            metrics.request_duration_ms.labels(route).observe((time.perf_counter() - start) * 1000.0)
            logs.request_id.reset(token)

    async def refuse_unparsed(self, route: str, context: Context, message: str) -> NoReturn:
        async def call(_: str) -> NoReturn:
            raise GatewayError.invalid(message)

        await self._counted(route, context, call)
        raise AssertionError("unreachable: _counted aborts the call")

    async def Recommend(  # noqa: N802 (generated name)
        self, request: recsys_pb2.RecommendRequest, context: Context
    ) -> recsys_pb2.RecommendResponse:
        async def call(request_id: str) -> recsys_pb2.RecommendResponse:
            result = await self.service.recommend(
                request.user_id,
                request.top_k or None,
                header_group=_metadata(context, "x-ab-group"),
                request_id=request_id,
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
        async def call(_: str) -> recsys_pb2.FeedbackResponse:
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
        async def call(_: str) -> recsys_pb2.PlaysResponse:
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


Method = Callable[[Any, Context], Awaitable[Message]]


def _parsing_handler(
    servicer: RecommenderServicer, route: str, request_type: type[Message], method: Method
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler that takes the raw request bytes and parses them itself (see the module docstring)."""

    async def handle(raw: bytes, context: Context) -> Message:
        try:
            request = request_type.FromString(raw)
        except DecodeError as exc:
            name = request_type.DESCRIPTOR.full_name
            await servicer.refuse_unparsed(route, context, f"the request is not a valid {name}: {exc}")
        return await method(request, context)

    return grpc.unary_unary_rpc_method_handler(handle, response_serializer=lambda m: m.SerializeToString())


def add_to_server(server: grpc.aio.Server, service: GatewayService) -> None:
    servicer = RecommenderServicer(service)
    handlers = {
        "Recommend": _parsing_handler(servicer, "grpc/Recommend", recsys_pb2.RecommendRequest, servicer.Recommend),
        "Feedback": _parsing_handler(servicer, "grpc/Feedback", recsys_pb2.FeedbackRequest, servicer.Feedback),
        "Plays": _parsing_handler(servicer, "grpc/Plays", recsys_pb2.PlaysRequest, servicer.Plays),
    }
    service_name = recsys_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, handlers),))
    server.add_registered_method_handlers(service_name, handlers)
