"""How every HTTP service of the project is served: uvicorn with httptools, on the caller's (uvloop) event loop,
without access logs (NGINX writes those, and the services count requests in Prometheus)."""

from __future__ import annotations

from typing import Any

import uvicorn


def server(app: Any, host: str, port: int) -> uvicorn.Server:
    config = uvicorn.Config(
        app, host=host, port=port, loop="none", http="httptools", log_level="warning", access_log=False, lifespan="on"
    )
    return uvicorn.Server(config)
