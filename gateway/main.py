"""Runs the gateway: REST (uvicorn) and gRPC (grpc.aio) in one process and one event loop, sharing one Triton
channel and one event sink. ``python -m gateway`` (the image) and ``recsys serve gateway`` call :func:`run`."""

from __future__ import annotations

import logging

import grpc

from gateway.coalesce import Coalescer
from gateway.events import EventSink
from gateway.experiment import Experiment, load_experiment
from gateway.grpc_api import add_to_server
from gateway.metrics import GatewayMetrics
from gateway.rest import create_app
from gateway.service import GatewayService
from recsys.core.asgi import server
from recsys.core.settings import Settings
from recsys.core.triton_client import AsyncTritonRecommender

log = logging.getLogger(__name__)


def experiment_of(settings: Settings) -> Experiment:
    return load_experiment(settings.experiment_file, settings.experiment or None)


def build_service(settings: Settings, experiment: Experiment | None = None) -> GatewayService:
    """Call inside the event loop that will serve (the gRPC channel binds to it)."""
    metrics = GatewayMetrics()
    triton = AsyncTritonRecommender(
        settings.triton_grpc_url,
        timeout_s=settings.triton_timeout_ms / 1000.0,
        api_key=settings.triton_api_key.get_secret_value() or None,
    )
    return GatewayService(
        experiment=experiment or experiment_of(settings),
        triton=triton,
        coalescer=Coalescer(triton, max_in_flight=settings.triton_max_in_flight, timeout_s=triton.timeout_s),
        events=EventSink(
            settings.feedback_url,
            timeout_s=settings.feedback_timeout_s,
            metrics=metrics,
            token=settings.feedback_token.get_secret_value(),
        ),
        metrics=metrics,
        default_top_k=settings.default_top_k,
        max_top_k=settings.max_top_k,
    )


async def serve(settings: Settings, experiment: Experiment | None = None) -> None:
    service = build_service(settings, experiment)
    app = create_app(service, max_body_bytes=settings.max_body_bytes)
    grpc_server = grpc.aio.server()
    add_to_server(grpc_server, service)
    grpc_address = f"{settings.gateway_host}:{settings.gateway_grpc_port}"
    if grpc_server.add_insecure_port(grpc_address) == 0:
        raise OSError(f"cannot bind gRPC to {grpc_address}")
    await grpc_server.start()
    http = server(
        app,
        settings.gateway_host,
        settings.gateway_port,
        max_header_bytes=settings.max_header_bytes,
        read_timeout_s=settings.read_timeout_s,
        keep_alive_s=settings.keep_alive_s,
    )
    log.info(
        "gateway: REST http://%s:%d, gRPC %s, Triton %s",
        settings.gateway_host, settings.gateway_port, grpc_address, settings.triton_grpc_url,
    )  # fmt: skip
    try:
        await http.serve()
    finally:
        await grpc_server.stop(grace=2.0)


def run(settings: Settings) -> None:
    import uvloop

    experiment = experiment_of(settings)  # fail on a bad config before anything binds
    uvloop.run(serve(settings, experiment))
