"""The serving stack run locally, every server a real one on loopback.

``process`` is the one supervisor of every server (own process group, readiness, log, stop then SIGKILL);
``triton`` (the bundled tritonserver), ``postgres``, ``nginx`` and ``prometheus`` configure theirs; ``local`` runs the
whole stack; ``ports`` (free ports) and ``memory`` (process-tree memory from /proc) serve the tests and benchmarks.
This package re-exports the Triton names.
"""

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
