"""What one Triton server is launched with: ports, model control, timeouts, environment; and where it answers."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from recsys.core.errors import ConfigError
from recsys.stack.ports import connect_host, free_ports
from recsys.stack.process import ServiceError

__all__ = [
    "DEFAULT_WORKDIR",
    "KEY_FILE",
    "RESTRICTED_APIS",
    "ModelControl",
    "TritonConfig",
    "TritonPorts",
    "TritonServerError",
    "TritonUrls",
    "resolve_ports",
]

ModelControl = Literal["explicit", "none", "poll"]

#: Where backends and server logs go unless the config says otherwise (relative to the working directory, like
#: ``Settings.runs_dir``; ``.cache/`` is git-ignored).
DEFAULT_WORKDIR = Path(".cache/triton")

#: The local stack keeps its Triton key in this file of its work folder (0600, made by ``recsys.stack.credentials``).
KEY_FILE = "triton-key"

#: What a server with an ``api_key`` answers only to holders of the key (``--http-restricted-api`` and
#: ``--grpc-restricted-protocol``): everything but ``health`` (liveness and readiness, which probes and the gateway's
#: readiness ask). Model control (``model-repository``: load with a file override runs code in the server) and
#: inference itself are the ones that matter: a client without the key cannot reach a composing step directly.
RESTRICTED_APIS = (
    "metadata", "inference", "shared-memory", "model-config", "model-repository", "statistics", "trace", "logging",
)  # fmt: skip


_KEY = re.compile(r"[A-Za-z0-9_.~-]{16,}")  # Triton's flag splits on ',', ':' and '='


class TritonServerError(ServiceError):
    """The Triton server cannot be found, started or reached, or it refused a request."""


@dataclass(frozen=True)
class TritonPorts:
    """Ports of the three endpoints; ``0`` picks a free port at start (so parallel servers don't collide)."""

    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    @classmethod
    def auto(cls) -> TritonPorts:
        return cls(0, 0, 0)

    @property
    def is_resolved(self) -> bool:
        return 0 not in (self.http, self.grpc, self.metrics)


def resolve_ports(ports: TritonPorts, host: str) -> TritonPorts:
    """``ports`` with each ``0`` replaced by a distinct free port of ``host``."""
    wanted = sum(1 for p in (ports.http, ports.grpc, ports.metrics) if p == 0)
    if not wanted:
        return ports
    free = iter(free_ports(wanted, host))
    return replace(
        ports,
        http=ports.http or next(free),
        grpc=ports.grpc or next(free),
        metrics=ports.metrics or next(free),
    )


@dataclass(frozen=True)
class TritonConfig:
    """How to launch one server. ``load_models`` (explicit mode only) are loaded at start; ``("*",)`` loads all,
    ``()`` loads none and leaves loading to ``TritonServer.load_model``."""

    model_repository: Path
    ports: TritonPorts = field(default_factory=TritonPorts)
    host: str = "127.0.0.1"
    model_control: ModelControl = "explicit"
    load_models: tuple[str, ...] = ()
    log_verbose: int = 0
    #: holds ``backends/`` and ``logs/``
    workdir: Path = DEFAULT_WORKDIR
    #: default: ``workdir/logs/tritonserver-<time>-<token>.log``
    log_file: Path | None = None
    #: a model that fails to load at start makes ``start`` raise (and stop the server); False only logs a warning.
    #: The server always runs with ``--exit-on-error=false`` and ``start`` judges the startup loads from the
    #: repository index: with that flag alone, a model whose config.pbtxt does not parse is dropped with a log line
    #: and the server still reports ready (measured on 2.51); with ``true`` the process just dies.
    fail_on_model_error: bool = True
    ready_timeout_s: float = 60.0
    stop_timeout_s: float = 30.0
    #: seconds one load/unload call may take
    model_timeout_s: float = 120.0
    #: appended last, e.g. ``("--repository-poll-secs=2",)``
    extra_args: tuple[str, ...] = ()
    #: extra environment of the server and its python stubs, e.g. ``(("RECSYS_DATABASE_URL", url),)`` for the
    #: lookup's live fold-in
    env: tuple[tuple[str, str], ...] = ()
    #: the key of :data:`RESTRICTED_APIS` (header ``recsys.core.triton_key.KEY_HEADER``); None: unrestricted.
    #: It is on the server's command line, which local users can read in /proc unless it is mounted ``hidepid``.
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.model_control not in ("explicit", "none", "poll"):
            raise ConfigError(f"model_control must be explicit, none or poll, not {self.model_control!r}")
        for name, port in (("http", self.ports.http), ("grpc", self.ports.grpc), ("metrics", self.ports.metrics)):
            if not 0 <= port <= 65535:
                raise ConfigError(f"{name} port {port} is outside 0..65535")
        if self.load_models and self.model_control != "explicit":
            raise ConfigError("load_models needs model_control='explicit' (the other modes load the whole repository)")
        if "*" in self.load_models and len(self.load_models) > 1:
            raise ConfigError("load_models: '*' (every model) must be the only entry")
        if self.api_key is not None and not _KEY.fullmatch(self.api_key):
            raise ConfigError("api_key must be 16 or more of A-Z a-z 0-9 _ - . ~ (a generated one is)")
        for timeout in (self.ready_timeout_s, self.stop_timeout_s, self.model_timeout_s):
            if timeout <= 0:
                raise ConfigError(f"timeouts must be positive, got {timeout}")


@dataclass(frozen=True)
class TritonUrls:
    """``http`` and ``grpc`` are ``host:port`` as ``tritonclient.http`` / ``tritonclient.grpc`` take them;
    ``metrics`` is the full Prometheus URL."""

    http: str
    grpc: str
    metrics: str

    @classmethod
    def of(cls, host: str, ports: TritonPorts) -> TritonUrls:
        where = connect_host(host)
        return cls(
            http=f"{where}:{ports.http}",
            grpc=f"{where}:{ports.grpc}",
            metrics=f"http://{where}:{ports.metrics}/metrics",
        )
