"""Run the real Triton Inference Server locally, without Docker: the ``tritonserver`` 2.51 that ``nvidia-pytriton``
bundles, with its python backend.

    RecsysError
    ├── ConfigError              a ``TritonConfig`` that cannot work (bad ports, --load-model outside explicit mode)
    └── ServiceError             (recsys.stack.process) a local server cannot be started or reached
        └── TritonServerError    the server cannot be found, started, reached, or refuses a model

Usage::

    with TritonServer(TritonConfig(model_repository=Path("triton_models"), ports=TritonPorts.auto())) as server:
        server.load_model("add_one")
        client = tritonclient.grpc.InferenceServerClient(server.urls.grpc)

One module per job: ``config`` (what a server is launched with, where it answers), ``install`` (locate the bundled
binary, lay out its python backend), ``server`` (the process, under the stack's one supervisor) and ``control``
(health, load, unload, index, metrics over plain HTTP). Inference clients use ``tritonclient`` against ``urls``.

Importing this package only imports the standard library.
"""

from recsys.stack.triton.config import (
    DEFAULT_WORKDIR,
    KEY_FILE,
    RESTRICTED_APIS,
    ModelControl,
    TritonConfig,
    TritonPorts,
    TritonServerError,
    TritonUrls,
)
from recsys.stack.triton.control import TritonControl
from recsys.stack.triton.install import TritonInstall, check_runnable, find_tritonserver
from recsys.stack.triton.server import LOG_TAIL_LINES, SHM_DIR, TritonServer

__all__ = [
    "DEFAULT_WORKDIR",
    "KEY_FILE",
    "LOG_TAIL_LINES",
    "RESTRICTED_APIS",
    "SHM_DIR",
    "ModelControl",
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
