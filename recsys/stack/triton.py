"""Run the real Triton Inference Server locally, without Docker: the ``tritonserver`` 2.51 that ``nvidia-pytriton``
bundles, with its python backend.

    RecsysError
    ├── ConfigError          a ``TritonConfig`` that cannot work (bad ports, --load-model outside explicit mode, ...)
    └── TritonServerError    the server cannot be found, started, reached, or refuses a model

Usage::

    with TritonServer(TritonConfig(model_repository=Path("triton_models"), ports=TritonPorts.auto())) as server:
        server.load_model("add_one")
        client = tritonclient.grpc.InferenceServerClient(server.urls.grpc)

The control plane (health, load, unload, readiness, metrics) talks plain HTTP through ``urllib``: five small JSON
calls need no client library, the launcher then works without gevent in the calling process, and Triton's own
``{"error": ...}`` text reaches our exceptions verbatim. Inference clients use ``tritonclient`` against ``urls``.

Importing this module only imports the standard library.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, NoReturn, Self

from recsys.core.errors import ConfigError, RecsysError

__all__ = [
    "DEFAULT_WORKDIR",
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

log = logging.getLogger(__name__)

ModelControl = Literal["explicit", "none", "poll"]
LinkMode = Literal["symlink", "copy"]

#: Where backends and server logs go unless the config says otherwise (relative to the working directory, like
#: ``Settings.runs_dir``; ``.cache/`` is git-ignored).
DEFAULT_WORKDIR = Path(".cache/triton")
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region_"
STUB_NAME = "triton_python_backend_stub"
LOG_TAIL_LINES = 40
MAX_ERROR_LINES = 12
PORT_RETRIES = 3


class TritonServerError(RecsysError):
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


@dataclass(frozen=True)
class TritonInstall:
    """The bundled server binary and what it needs to run: a backend directory and the library search path."""

    binary: Path
    #: ``--backend-directory``: holds ``python/`` with the backend library, its utils module and the stub
    backend_dir: Path
    #: ``--cache-directory`` (response cache implementations)
    cache_dir: Path
    #: ``nvidia_pytriton.libs``: the server's own shared libraries
    libs_dir: Path
    #: holds ``libpython3.X.so.1.0``, which the stub links to
    python_libdir: Path
    #: first on PATH: the stub runs the Python found there, so model.py sees this environment's packages
    python_bin_dir: Path
    pytriton_version: str

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        # Requests are tiny: OpenBLAS's worker threads only spin. Measured under load with the lookup's live
        # fold-in (np.linalg.solve per refold): Triton's CPU per request 1.66 ms with them, 0.47 ms without.
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        env["PATH"] = os.pathsep.join(p for p in (str(self.python_bin_dir), env.get("PATH", "")) if p)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(self.libs_dir), str(self.python_libdir), env.get("LD_LIBRARY_PATH", "")) if p
        )
        return env


def find_tritonserver(workdir: Path = DEFAULT_WORKDIR, *, link: LinkMode = "symlink") -> TritonInstall:
    """Locate the server inside the installed ``pytriton`` package and lay out its python backend under
    ``workdir/backends/python`` (idempotent; safe when several processes do it at once).

    ``link="symlink"`` (default) follows the installed package; ``"copy"`` makes a backend dir that outlives it.
    """
    spec = importlib.util.find_spec("pytriton")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise TritonServerError(
            "the Triton server comes with the 'nvidia-pytriton' package, which is not installed: "
            "pip install -e . (it is a dependency of this project; Linux x86-64, glibc >= 2.35)"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    dist = package / "tritonserver"
    binary = dist / "bin" / "tritonserver"
    backend_src = dist / "backends" / "python"
    py_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / py_version / STUB_NAME
    libs_dir = package.parent / "nvidia_pytriton.libs"
    for needed in (binary, backend_src / "libtriton_python.so", backend_src / "triton_python_backend_utils.py"):
        if not needed.is_file():
            raise TritonServerError(f"incomplete nvidia-pytriton install: {needed} is missing (reinstall it)")
    if not stub.is_file():
        have = sorted(p.name for p in (dist / "python_backend_stubs").glob("*"))
        raise TritonServerError(f"nvidia-pytriton has no python backend stub for Python {py_version} (has {have})")

    python_libdir = Path(str(sysconfig.get_config_var("LIBDIR") or ""))
    soname = str(sysconfig.get_config_var("INSTSONAME") or f"libpython{py_version}.so.1.0")
    if not (python_libdir / soname).exists():
        raise TritonServerError(
            f"the python backend stub links to {soname}, which is not in {python_libdir}: "
            "this Python was built without --enable-shared"
        )

    backend_dir = workdir.absolute() / "backends"
    target = backend_dir / "python"
    target.mkdir(parents=True, exist_ok=True)
    for src, name in (
        (backend_src / "libtriton_python.so", "libtriton_python.so"),
        (backend_src / "triton_python_backend_utils.py", "triton_python_backend_utils.py"),
        (stub, STUB_NAME),
    ):
        _place(src, target / name, link)
    try:
        version = importlib.metadata.version("nvidia-pytriton")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return TritonInstall(
        binary=binary,
        backend_dir=backend_dir,
        cache_dir=dist / "caches",
        libs_dir=libs_dir,
        python_libdir=python_libdir,
        python_bin_dir=Path(sys.executable).parent,  # not resolved: a venv's bin/, not the base interpreter's
        pytriton_version=version,
    )


def _place(src: Path, dst: Path, link: LinkMode) -> None:
    """Make ``dst`` a symlink to / a copy of ``src`` unless it already is one; atomic via ``os.replace``."""
    if link == "symlink":
        if dst.is_symlink() and Path(os.readlink(dst)) == src:
            return
    elif not dst.is_symlink() and dst.is_file():
        have, want = dst.stat(), src.stat()
        if have.st_size == want.st_size and have.st_mtime_ns == want.st_mtime_ns:
            return
    tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}")
    if link == "symlink":
        tmp.symlink_to(src)
    else:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def check_runnable(install: TritonInstall, timeout_s: float = 30.0) -> None:
    """Raise ``TritonServerError`` unless the binary loads and runs here (``tritonserver --help``)."""
    try:
        done = subprocess.run(
            [str(install.binary), "--help"],
            env=install.env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TritonServerError(f"cannot run {install.binary}: {exc}") from exc
    output = done.stdout + done.stderr
    if "Usage: tritonserver" not in output:
        raise TritonServerError(f"{install.binary} does not run here (exit {done.returncode}): {output.strip()[-800:]}")


class TritonControl:
    """The control plane of any running server (ours or one started elsewhere), by its URLs."""

    def __init__(self, urls: TritonUrls, *, timeout_s: float = 120.0) -> None:
        self.urls = urls
        self.timeout_s = timeout_s
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an http_proxy

    @classmethod
    def at(cls, http: str, metrics: str = "", *, timeout_s: float = 120.0) -> TritonControl:
        """A control for ``host:port`` of a server's HTTP endpoint."""
        return cls(TritonUrls(http=http, grpc="", metrics=metrics), timeout_s=timeout_s)

    def load_model(self, name: str, config: str | None = None) -> None:
        """Load (or reload) ``name`` from the repository; returns when it is ready (explicit mode only).

        ``config`` (model config as JSON) overrides the model's config.pbtxt for this load, which is how an
        ensemble is switched to new pinned step versions in one step.
        """
        payload = b"{}" if config is None else json.dumps({"parameters": {"config": config}}).encode()
        status, body = self._request("POST", f"/v2/repository/models/{_quote(name)}/load", payload)
        if status != 200:
            raise TritonServerError(f"Triton could not load model {name!r}: {_error_text(body)}")

    def unload_model(self, name: str, *, wait: bool = True) -> None:
        """Unload ``name`` (explicit mode only). Triton unloads in the background; ``wait`` polls until it is gone."""
        status, body = self._request("POST", f"/v2/repository/models/{_quote(name)}/unload", b"{}")
        if status != 200:
            raise TritonServerError(f"Triton could not unload model {name!r}: {_error_text(body)}")
        deadline = time.monotonic() + self.timeout_s
        while wait and self.is_model_ready(name):
            if time.monotonic() > deadline:
                raise TritonServerError(f"model {name!r} still ready {self.timeout_s:g} s after unload")
            time.sleep(0.05)

    def is_model_ready(self, name: str, version: str = "") -> bool:
        path = f"/v2/models/{_quote(name)}" + (f"/versions/{_quote(version)}" if version else "") + "/ready"
        status, _ = self._request("GET", path)
        return status == 200

    def is_server_ready(self) -> bool:
        try:
            status, _ = self._request("GET", "/v2/health/ready")
        except TritonServerError:
            return False
        return status == 200

    def repository_index(self) -> list[dict[str, Any]]:
        """Every model of the repository with its ``state`` and, after a failed load, the ``reason``."""
        status, body = self._request("POST", "/v2/repository/index", b"{}")
        if status != 200:
            raise TritonServerError(f"Triton repository index failed: {_error_text(body)}")
        index = json.loads(body)
        assert isinstance(index, list)
        return index

    def metrics(self) -> str:
        """The Prometheus text of the metrics endpoint."""
        try:
            with self._opener.open(self.urls.metrics, timeout=10) as response:
                text: str = response.read().decode()
                return text
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise TritonServerError(f"cannot read Triton metrics at {self.urls.metrics}: {exc}") from exc

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(f"http://{self.urls.http}{path}", data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()
        except (OSError, http.client.HTTPException) as exc:
            raise TritonServerError(f"Triton at {self.urls.http} did not answer {method} {path}: {exc}") from exc


class TritonServer:
    """One ``tritonserver`` process: ``start()`` returns once it answers ready; ``stop()`` (or leaving the ``with``
    block) shuts it down, the python stubs included."""

    def __init__(self, config: TritonConfig, install: TritonInstall | None = None) -> None:
        self.config = config
        self._install = install
        self._ports = config.ports
        self._process: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._token = secrets.token_hex(4)
        self.log_path: Path | None = None
        self.returncode: int | None = None
        self.ready_after_s: float | None = None
        self.stopped_after_s: float | None = None
        self._started_at = 0.0
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an http_proxy

    # --- lifecycle -------------------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        if self._process is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def install(self) -> TritonInstall:
        if self._install is None:
            self._install = find_tritonserver(self.config.workdir)
        return self._install

    @property
    def ports(self) -> TritonPorts:
        """The ports in use (auto-picked ones resolved once ``start`` has run)."""
        return self._ports

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def shm_prefix(self) -> str:
        """Prefix of this server's python-backend regions in /dev/shm (unique, so a crash's leftovers are ours)."""
        return f"{SHM_PREFIX}recsys_{self._token}_"

    @property
    def urls(self) -> TritonUrls:
        host = _connect_host(self.config.host)
        return TritonUrls(
            http=f"{host}:{self._ports.http}",
            grpc=f"{host}:{self._ports.grpc}",
            metrics=f"http://{host}:{self._ports.metrics}/metrics",
        )

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        """The full ``tritonserver`` command line for the current (resolved) ports."""
        cfg, install = self.config, self.install
        args = [
            str(install.binary),
            f"--model-repository={cfg.model_repository.absolute()}",
            f"--backend-directory={install.backend_dir}",
            f"--cache-directory={install.cache_dir}",
            f"--http-address={cfg.host}",
            f"--grpc-address={cfg.host}",
            f"--metrics-address={cfg.host}",
            f"--http-port={self._ports.http}",
            f"--grpc-port={self._ports.grpc}",
            f"--metrics-port={self._ports.metrics}",
            "--pinned-memory-pool-byte-size=0",
            "--allow-gpu-metrics=false",
            "--metrics-config=summary_latencies=true",
            f"--model-control-mode={cfg.model_control}",
            "--exit-on-error=false",
            f"--log-verbose={cfg.log_verbose}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]
        args += [f"--load-model={name}" for name in cfg.load_models]
        return args + list(cfg.extra_args)

    def start(self) -> Self:
        """Launch and wait until ``/v2/health/ready`` answers (and the gRPC and metrics ports accept connections).

        Raises ``TritonServerError`` with the end of the server's log if it exits, a model fails at start, or
        ``ready_timeout_s`` passes; the process is stopped before raising.
        """
        if self.is_running():
            raise TritonServerError(f"this server is already running (pid {self.pid})")
        if not self.config.model_repository.is_dir():
            raise ConfigError(f"model repository {self.config.model_repository} is not a directory")
        auto_ports = not self.config.ports.is_resolved
        for attempt in range(1, PORT_RETRIES + 1):
            try:
                self._launch()
                self._wait_ready()
                return self
            except _PortTakenError as exc:
                if not auto_ports or attempt == PORT_RETRIES:
                    raise TritonServerError(str(exc)) from None
                log.info("tritonserver: a picked port was taken meanwhile; retrying with others")
            except BaseException:  # KeyboardInterrupt while waiting: leave no server behind
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        cfg = self.config
        self._ports = _resolve_ports(cfg.ports, cfg.host)
        self.log_path = cfg.log_file or (
            cfg.workdir.absolute() / "logs" / f"tritonserver-{time.strftime('%Y%m%d-%H%M%S')}-{self._token}.log"
        )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = self.command()
        log.debug("starting %s", " ".join(command))
        self._log_handle = self.log_path.open("wb")
        self.returncode = self.ready_after_s = self.stopped_after_s = None
        self._started_at = time.monotonic()
        try:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=self._log_handle,
                stderr=subprocess.STDOUT,
                env=self.install.env() | dict(self.config.env),
                start_new_session=True,  # its own process group: stop() can reach the stubs too
            )
        except OSError as exc:
            self._log_handle.close()
            raise TritonServerError(f"cannot start {command[0]}: {exc}") from exc
        # If the caller never stops it (a crash, an interrupted test run), kill it at interpreter exit.
        self._finalizer = weakref.finalize(self, _kill_and_clean, self._process, self.shm_prefix)

    def _wait_ready(self) -> None:
        cfg = self.config
        deadline = self._started_at + cfg.ready_timeout_s
        delay = 0.05
        checked = tolerated = False
        while True:
            process = self._process
            assert process is not None
            if process.poll() is not None:
                self._fail(f"tritonserver exited with status {process.returncode} while starting")
            # The endpoints start only once the startup loads are over, so the first answer can judge them.
            if not checked and self._status("/v2/health/live") == 200:
                checked = True
                failed = self._failed_startup_models()
                if failed and cfg.fail_on_model_error:
                    self._fail("models failed to load at start: " + "; ".join(failed))
                if failed:  # strict readiness stays false with an unavailable model: don't wait for it
                    log.warning("tritonserver is up without these models: %s", "; ".join(failed))
                    tolerated = True
            if checked and (tolerated or self._status("/v2/health/ready") == 200) and self._ports_accept():
                self.ready_after_s = time.monotonic() - self._started_at
                log.info(
                    "tritonserver ready in %.1f s (pid %d, http %s, grpc %s; log %s)",
                    self.ready_after_s, process.pid, self.urls.http, self.urls.grpc, self.log_path,
                )  # fmt: skip
                return
            if time.monotonic() > deadline:
                self._fail(f"tritonserver was not ready after {cfg.ready_timeout_s:g} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def _fail(self, message: str) -> NoReturn:
        self.stop()
        tail = self.log_tail()
        errors = _error_lines(self._read_log(0))
        summary = "".join(f"\n  {line}" for line in errors[:MAX_ERROR_LINES])
        text = f"{message}{summary}\nlast {LOG_TAIL_LINES} lines of {self.log_path}:\n{tail}"
        if any("already in use" in line for line in errors):
            raise _PortTakenError(text)
        raise TritonServerError(text)

    def stop(self) -> int | None:
        """SIGTERM, wait up to ``stop_timeout_s``, then SIGKILL the whole process group. Removes the server's
        /dev/shm regions if it did not exit cleanly. Returns the exit status (None if it was never started)."""
        process = self._process
        if process is None:
            return self.returncode
        began = time.monotonic()
        killed = False
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.config.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "tritonserver (pid %d) ignored SIGTERM for %g s: killing it",
                    process.pid,
                    self.config.stop_timeout_s,
                )
                killed = True
                _kill_group(process)
        # Stubs outlive a dead server for a moment (they watch its health); give them a grace period, then kill.
        if _wait_group_gone(process.pid, timeout_s=5.0):
            killed = _kill_group(process) or killed
        self.returncode = process.returncode
        if killed or process.returncode != 0:
            removed = _remove_shm_regions(self.shm_prefix)
            if removed:
                log.info("removed %d python-backend shm regions left by tritonserver", removed)
        self.stopped_after_s = time.monotonic() - began
        if self._finalizer is not None:
            self._finalizer.detach()
        if self._log_handle is not None:
            self._log_handle.close()
        self._process = None
        return self.returncode

    def running_pids(self) -> list[int]:
        """Live (non-zombie) processes of this server's process group: the server and its python stubs."""
        process = self._process
        return [] if process is None else _group_members(process.pid)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        size = self._log_size()
        return "\n".join(self._read_log(max(0, size - 64 * 1024)).splitlines()[-lines:])

    def _log_size(self) -> int:
        try:
            return 0 if self.log_path is None else self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def _read_log(self, offset: int) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace")

    # --- control plane: delegated to TritonControl, with the server log added to load errors ------------------
    @property
    def control(self) -> TritonControl:
        return TritonControl(self.urls, timeout_s=self.config.model_timeout_s)

    def load_model(self, name: str, config: str | None = None) -> None:
        """Like :meth:`TritonControl.load_model`; a failure also quotes the cause from the server log."""
        offset = self._log_size()
        try:
            self.control.load_model(name, config)
        except TritonServerError as exc:
            # Triton's answer is often generic ("failed to poll from model repository"); the cause is in its log.
            causes = _error_lines(self._read_log(offset))[:MAX_ERROR_LINES]
            detail = "".join(f"\n  {line}" for line in causes) or f" (see {self.log_path})"
            raise TritonServerError(f"{exc}{detail}") from exc

    def unload_model(self, name: str, *, wait: bool = True) -> None:
        self.control.unload_model(name, wait=wait)

    def is_model_ready(self, name: str, version: str = "") -> bool:
        return self.control.is_model_ready(name, version)

    def repository_index(self) -> list[dict[str, Any]]:
        return self.control.repository_index()

    def metrics(self) -> str:
        return self.control.metrics()

    def _status(self, path: str) -> int | None:
        """Status of a quick GET, or None while nothing answers (used while starting)."""
        request = urllib.request.Request(f"http://{self.urls.http}{path}")
        try:
            with self._opener.open(request, timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code
        except (OSError, http.client.HTTPException):
            return None

    def _ports_accept(self) -> bool:
        host = _connect_host(self.config.host).strip("[]")
        for port in (self._ports.grpc, self._ports.metrics):
            try:
                socket.create_connection((host, port), timeout=1).close()
            except OSError:
                return False
        return True

    def _failed_startup_models(self) -> list[str]:
        """Models the server should have loaded at start but did not, with Triton's reason where it gives one."""
        cfg = self.config
        if cfg.model_control == "explicit" and not cfg.load_models:
            return []
        try:
            index = self.repository_index()
        except TritonServerError as exc:
            self._fail(str(exc))
        wanted = (
            {str(e["name"]) for e in index}
            if cfg.model_control != "explicit" or cfg.load_models == ("*",)
            else set(cfg.load_models)
        )
        ready = {str(e["name"]) for e in index if e.get("state") == "READY"}
        reasons = {str(e["name"]): str(e["reason"]) for e in index if e.get("reason")}
        return [f"{name}: {reasons.get(name) or 'not loaded (see the server log)'}" for name in sorted(wanted - ready)]


class _PortTakenError(TritonServerError):
    """A picked port was bound by someone else between picking and launching."""


def _resolve_ports(ports: TritonPorts, host: str) -> TritonPorts:
    wanted = [p for p in (ports.http, ports.grpc, ports.metrics) if p == 0]
    if not wanted:
        return ports
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.ExitStack() as stack:  # hold them all open at once so the picks differ
        sockets = [stack.enter_context(socket.socket(family, socket.SOCK_STREAM)) for _ in wanted]
        for sock in sockets:
            sock.bind((host, 0))
        free = iter(int(sock.getsockname()[1]) for sock in sockets)
        return replace(
            ports,
            http=ports.http or next(free),
            grpc=ports.grpc or next(free),
            metrics=ports.metrics or next(free),
        )


def _connect_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _error_text(body: bytes) -> str:
    try:
        payload = json.loads(body)
    except ValueError:
        return body.decode("utf-8", errors="replace").strip() or "(no message)"
    if isinstance(payload, dict) and "error" in payload:
        return str(payload["error"])
    return json.dumps(payload)


def _error_lines(log_text: str) -> list[str]:
    """The error lines of a tritonserver log, shortened, without the harmless ones of a machine with no GPU."""
    lines = []
    for line in log_text.splitlines():
        if not _ERROR_LINE.match(line) or any(noise in line for noise in _HARMLESS):
            continue
        lines.append(_LIBPROTOBUF_PREFIX.sub("protobuf: ", _GLOG_PREFIX.sub("", line)).strip())
    return lines


_ERROR_LINE = re.compile(r"^(E\d{4} |\[libprotobuf ERROR|error: |.*: unrecognized option)")
_GLOG_PREFIX = re.compile(r"^E\d{4} [\d:.]+ +\d+ ")
_LIBPROTOBUF_PREFIX = re.compile(r"^\[libprotobuf ERROR [^\]]*\] ")
_HARMLESS = ("CudaDriverHelper has not been initialized", "NVML", "DCGM")


def _group_members(pgid: int) -> list[int]:
    """Pids of live (not zombie) processes whose process group is ``pgid`` (Linux /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def _wait_group_gone(pgid: int, timeout_s: float) -> bool:
    """Wait for the group to empty; True if members remain after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while _group_members(pgid):
        if time.monotonic() > deadline:
            return True
        time.sleep(0.05)
    return False


def _remove_shm_regions(prefix: str) -> int:
    removed = 0
    for region in SHM_DIR.glob(f"{prefix}*"):
        with contextlib.suppress(FileNotFoundError):
            region.unlink()
            removed += 1
    return removed


def _kill_and_clean(process: subprocess.Popen[bytes], shm_prefix: str) -> None:
    """Last resort at interpreter exit for a server nobody stopped."""
    _kill_group(process)
    _remove_shm_regions(shm_prefix)


def _kill_group(process: subprocess.Popen[bytes]) -> bool:
    """SIGKILL the process group of ``process`` and reap it; True if anything was there to kill."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    return True
