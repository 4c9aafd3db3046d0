"""The serving stack run locally: the real Triton Inference Server (``recsys.stack.triton``)."""

from recsys.stack.triton import (
    TritonConfig,
    TritonControl,
    TritonInstall,
    TritonPorts,
    TritonServer,
    TritonServerError,
    TritonUrls,
    check_runnable,
    find_tritonserver,
)

__all__ = [
    "TritonConfig",
    "TritonControl",
    "TritonInstall",
    "TritonPorts",
    "TritonServer",
    "TritonServerError",
    "TritonUrls",
    "check_runnable",
    "find_tritonserver",
]
