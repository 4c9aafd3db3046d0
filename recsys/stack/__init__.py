"""The serving stack run locally, every server a real one on loopback.

``process`` is the one supervisor of every server (own process group, readiness, log, stop then SIGKILL, a
parent-death signal); ``triton`` (the bundled tritonserver), ``postgres``, ``nginx`` and ``prometheus`` configure
theirs; ``local`` runs the whole stack; ``ports`` picks free ports and checks taken ones (naming their holder);
``state`` is the running stack's state file, read by ``status`` (``recsys stack status``) and ``down``
(``recsys stack down``); ``pids`` tells whether a recorded pid is still the same process; ``memory``
(process-tree memory from /proc) serves the tests and benchmarks. This package re-exports the Triton names.
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
