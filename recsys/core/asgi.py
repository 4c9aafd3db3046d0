"""How every HTTP service of the project is served and answers: uvicorn with httptools on the caller's (uvloop)
event loop, without access logs (NGINX writes those, and the services count requests in Prometheus); JSON bodies
through orjson, errors as ``{"error": {"code", "message"}}``."""

from __future__ import annotations

from typing import Any

import orjson
import uvicorn
from starlette.responses import Response


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": {"code": code, "message": message}}, status, headers)


def server(app: Any, host: str, port: int) -> uvicorn.Server:
    config = uvicorn.Config(
        app, host=host, port=port, loop="none", http="httptools", log_level="warning", access_log=False, lifespan="on"
    )
    return uvicorn.Server(config)
