"""One ``tritonserver`` process under the stack's supervisor (``recsys.stack.process``): its command line, a
readiness check that also judges the models loaded at start, load errors quoted from its log, and the removal of
its python-backend regions in /dev/shm when it did not exit cleanly."""

from __future__ import annotations

import contextlib
import functools
import http.client
import logging
import re
import secrets
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self

from recsys.core.errors import ConfigError
from recsys.core.triton_key import KEY_HEADER
from recsys.stack.ports import connect_host
from recsys.stack.process import NotReadyError, ServiceError, ServiceProcess
from recsys.stack.triton.config import (
    RESTRICTED_APIS,
    TritonConfig,
    TritonPorts,
    TritonServerError,
    TritonUrls,
    resolve_ports,
)
from recsys.stack.triton.control import TritonControl
from recsys.stack.triton.install import TritonInstall, find_tritonserver

__all__ = ["LOG_TAIL_LINES", "SHM_DIR", "SHM_PREFIX", "TritonServer"]

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region_"
LOG_TAIL_LINES = 40
MAX_ERROR_LINES = 12
PORT_RETRIES = 3
#: stubs outlive a dead server for a moment (they watch its health): then they are killed
STUB_GRACE_S = 5.0


class TritonServer:
    """One ``tritonserver`` process: ``start()`` returns once it answers ready; ``stop()`` (or leaving the ``with``
    block) shuts it down, the python stubs included."""

    def __init__(self, config: TritonConfig, install: TritonInstall | None = None) -> None:
        self.config = config
        self._install = install
        self._ports = config.ports
        self._service: ServiceProcess | None = None
        self._token = secrets.token_hex(4)
        self.log_path: Path | None = None
        self.returncode: int | None = None
        self.ready_after_s: float | None = None
        self.stopped_after_s: float | None = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an http_proxy

    # --- lifecycle -------------------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        if self._service is None:
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
        return None if self._service is None else self._service.pid

    @property
    def shm_prefix(self) -> str:
        """Prefix of this server's python-backend regions in /dev/shm (unique, so a crash's leftovers are ours)."""
        return f"{SHM_PREFIX}recsys_{self._token}_"

    @property
    def urls(self) -> TritonUrls:
        return TritonUrls.of(self.config.host, self._ports)

    def is_running(self) -> bool:
        return self._service is not None and self._service.is_running()

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
        if cfg.api_key:
            restricted = f"{','.join(RESTRICTED_APIS)}:{KEY_HEADER}={cfg.api_key}"
            args += [f"--http-restricted-api={restricted}", f"--grpc-restricted-protocol={restricted}"]
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
        self._ports = resolve_ports(cfg.ports, cfg.host)
        self.log_path = cfg.log_file or (
            cfg.workdir.absolute() / "logs" / f"tritonserver-{time.strftime('%Y%m%d-%H%M%S')}-{self._token}.log"
        )
        self.returncode = self.ready_after_s = self.stopped_after_s = None
        self._service = ServiceProcess(
            "tritonserver",
            self.command(),
            log_path=self.log_path,
            log_mode="wb",
            env=self.install.env() | dict(cfg.env),
            signal_group=False,  # SIGTERM to the server only: it ends its stubs itself
            stop_timeout_s=cfg.stop_timeout_s,
            group_grace_s=STUB_GRACE_S,
            on_unclean_exit=functools.partial(_remove_shm_regions, self.shm_prefix),
            poll_max_s=0.5,
        )
        try:
            self._service.launch()
        except ServiceError as exc:  # the binary could not be executed
            raise TritonServerError(str(exc)) from exc

    def _wait_ready(self) -> None:
        service = self._service
        assert service is not None
        # The endpoints start only once the startup loads are over, so the first answer can judge them.
        state = {"checked": False, "tolerated": False}

        def ready() -> bool:
            if not state["checked"] and self._status("/v2/health/live") == 200:
                state["checked"] = True
                failed = self._failed_startup_models()
                if failed and self.config.fail_on_model_error:
                    self._fail("models failed to load at start: " + "; ".join(failed))
                if failed:  # strict readiness stays false with an unavailable model: don't wait for it
                    log.warning("tritonserver is up without these models: %s", "; ".join(failed))
                    state["tolerated"] = True
            return (
                state["checked"]
                and (state["tolerated"] or self._status("/v2/health/ready") == 200)
                and self._ports_accept()
            )

        try:
            self.ready_after_s = service.wait_ready(self.config.ready_timeout_s, ready)
        except NotReadyError as exc:
            self._fail(exc.reason)
        log.info(
            "tritonserver ready in %.1f s (pid %d, http %s, grpc %s; log %s)",
            self.ready_after_s, service.pid, self.urls.http, self.urls.grpc, self.log_path,
        )  # fmt: skip

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
        service = self._service
        if service is None:
            return self.returncode
        self.returncode = service.stop()
        self.stopped_after_s = service.stopped_after_s
        self._service = None
        return self.returncode

    def running_pids(self) -> list[int]:
        """Live (non-zombie) processes of this server's process group: the server and its python stubs."""
        return [] if self._service is None else self._service.running_pids()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self._read_log(max(0, self._log_size() - 64 * 1024)).splitlines()[-lines:])

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
        return TritonControl(self.urls, timeout_s=self.config.model_timeout_s, api_key=self.config.api_key)

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
        host = connect_host(self.config.host).strip("[]")
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


def _remove_shm_regions(prefix: str) -> int:
    removed = 0
    for region in SHM_DIR.glob(f"{prefix}*"):
        with contextlib.suppress(FileNotFoundError):
            region.unlink()
            removed += 1
    if removed:
        log.info("removed %d python-backend shm regions left by tritonserver", removed)
    return removed
