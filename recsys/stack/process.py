"""The one supervisor of every server the project starts (Triton, PostgreSQL, NGINX, Prometheus, the feedback
writer, the gateways, and the benchmarks' servers).

A :class:`ServiceProcess` starts its command in a process group of its own (so a stop reaches the children: Triton's
python stubs, NGINX's workers, PostgreSQL's backends), sends its output to a log file, waits until a readiness check
passes, and stops with its signal, then SIGKILLs the whole group after a timeout. Whatever is left of the group
after the leader exits gets a grace period, then SIGKILL. A server nobody stopped is killed at interpreter exit,
and one whose supervisor is killed outright (SIGKILL, the OOM killer) gets its ``death_signal`` from the kernel
(Linux's parent-death signal), so no server outlives the process that started it: each server is given the
signal on which it stops its own children (PostgreSQL's backends, NGINX's workers, Triton's stubs).

    RecsysError
    └── ServiceError         a server cannot be started, does not become ready, or cannot be stopped
        └── NotReadyError    it exited while starting or missed its readiness deadline (``reason``: one line)
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Self

from recsys.core.errors import RecsysError
from recsys.stack.memory import group_members

__all__ = ["NotReadyError", "ReadyCheck", "ServiceError", "ServiceProcess", "http_ok", "tail"]

log = logging.getLogger(__name__)

#: True once the server answers; called repeatedly while it starts.
ReadyCheck = Callable[[], bool]
LogMode = Literal["ab", "wb"]


class ServiceError(RecsysError):
    """A local server could not be started, did not become ready, or could not be stopped."""


class NotReadyError(ServiceError):
    """The server exited while starting or was not ready in time; ``reason`` is the one-line cause."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


def http_ok(url: str, timeout_s: float = 1.0) -> bool:
    """True when a GET of ``url`` answers 200 (the readiness check of most servers)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file (its last 64 KiB are read)."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class ServiceProcess:
    """One server process: ``start()`` returns once it is ready; ``stop()`` (or leaving the ``with`` block) ends it
    and its process group. ``ready_url`` (answers 200) or ``ready`` (a callable) says when it is ready.

    ``signal_group`` sends the stop signal to the whole group (False: to the leader only, for servers that stop
    their own children: Triton's stubs watch its health, PostgreSQL shuts its backends down). ``on_unclean_exit``
    runs when the server was killed or exited with a non-zero status (Triton removes its /dev/shm regions).
    ``death_signal`` (default: the stop signal) reaches the server when its supervisor dies; ``None`` lets it
    outlive it. The kernel ties it to the launching thread, so it is set only for servers launched from the main
    thread (one a worker thread starts, e.g. a Triton the watchdog restarts, would die with that thread).
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        *,
        log_path: Path,
        ready_url: str | None = None,
        ready: ReadyCheck | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: int = signal.SIGTERM,
        signal_group: bool = True,
        stop_timeout_s: float = 15.0,
        group_grace_s: float = 5.0,
        on_unclean_exit: Callable[[], object] | None = None,
        log_mode: LogMode = "ab",
        user: str | None = None,
        group: str | None = None,
        poll_max_s: float = 0.1,
        death_signal: int | Literal["stop"] | None = "stop",
    ) -> None:
        self.name = name
        self.command = list(command)
        self.log_path = log_path
        self.ready_url = ready_url
        self.ready = ready if ready is not None else (lambda: http_ok(ready_url) if ready_url else True)
        self.env = env
        self.cwd = cwd
        self.stop_signal = stop_signal
        self.signal_group = signal_group
        self.stop_timeout_s = stop_timeout_s
        self.group_grace_s = group_grace_s
        self.on_unclean_exit = on_unclean_exit
        self.log_mode: LogMode = log_mode
        self.user = user
        self.group = group
        self.poll_max_s = poll_max_s
        self.death_signal: int | None = stop_signal if death_signal == "stop" else death_signal
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.started_at = 0.0
        self.stopped_after_s: float | None = None
        self._log: IO[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    # --- starting ---------------------------------------------------------------------------------------------
    def launch(self) -> None:
        """Start the command without waiting for readiness (see :meth:`wait_ready`)."""
        if self.is_running():
            raise ServiceError(f"{self.name} is already running (pid {self.pid})")
        path = (self.env if self.env is not None else os.environ).get("PATH")
        if shutil.which(self.command[0], path=path) is None:  # said here: through setpriv it would be its exit code
            raise ServiceError(f"cannot start {self.name} ({self.command[0]}): no such executable file")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._close_log()
        self._log = self.log_path.open(self.log_mode)
        self.returncode = self.stopped_after_s = None
        self.started_at = time.monotonic()
        log.debug("starting %s: %s", self.name, " ".join(self.command))
        try:
            process = subprocess.Popen(
                _dying_with_parent(self.command, self.death_signal),
                stdout=self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # its own process group: a stop reaches its children too
                user=self.user,
                group=self.group,
                extra_groups=[] if self.user is not None else None,
            )
        except OSError as exc:
            self._close_log()
            raise ServiceError(f"cannot start {self.name} ({self.command[0]}): {exc.strerror or exc}") from None
        self.process = process
        # If nobody stops it (a crash, an interrupted test run), kill it at interpreter exit.
        self._finalizer = weakref.finalize(self, _kill_and_clean, process, self.on_unclean_exit)

    def wait_ready(self, timeout_s: float = 60.0, ready: ReadyCheck | None = None) -> float:
        """Poll the readiness check (backing off to ``poll_max_s``) until it passes; returns the seconds since
        launch. Raises :class:`NotReadyError` if the process exits or ``timeout_s`` passes (the process is left
        as it is: the caller stops it). An exception of the check itself propagates."""
        check = ready or self.ready
        deadline = self.started_at + timeout_s
        delay = 0.05
        while True:
            process = self.process
            if process is None:
                raise NotReadyError(f"{self.name} was never started")
            if process.poll() is not None:
                raise NotReadyError(f"{self.name} exited with status {process.returncode} while starting")
            if check():
                return time.monotonic() - self.started_at
            if time.monotonic() > deadline:
                where = f" at {self.ready_url}" if self.ready_url else ""
                raise NotReadyError(f"{self.name} was not ready{where} after {timeout_s:g} s")
            time.sleep(delay)
            delay = min(delay * 1.5, self.poll_max_s)

    def start(self, timeout_s: float = 60.0) -> Self:
        """Launch and wait until ready; on failure stop it and raise with the end of its log."""
        if self.is_running():
            return self
        self.launch()
        try:
            self.wait_ready(timeout_s)
        except NotReadyError as exc:
            self.stop()
            raise NotReadyError(f"{exc.reason}; log {self.log_path}:\n{self.log_tail()}", reason=exc.reason) from None
        except BaseException:  # KeyboardInterrupt while waiting: leave no server behind
            self.stop()
            raise
        return self

    # --- state ------------------------------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def running_pids(self) -> list[int]:
        """Live (non-zombie) members of the process group: the server and whatever it started."""
        return [] if self.process is None else group_members(self.process.pid)

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def read_log(self, offset: int = 0) -> str:
        """The log from byte ``offset`` on ("" when there is none)."""
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(offset)
                return handle.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return tail(self.log_path, lines)

    # --- stopping ---------------------------------------------------------------------------------------------
    def _signal(self, signum: int, *, group: bool) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(self.process.pid, signum)
            else:
                self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL the whole group, as a crash would: no cleanup in the process (durability tests use this)."""
        self._finish(killed=_kill_group(self.process) if self.process is not None else False)

    def stop(self, timeout_s: float | None = None) -> int | None:
        """The stop signal, up to ``timeout_s`` (default ``stop_timeout_s``) for the process to exit, then SIGKILL
        of the group; then the rest of the group gets ``group_grace_s`` before SIGKILL. Returns the exit status
        (None if it never started)."""
        process = self.process
        if process is None:
            return self.returncode
        began = time.monotonic()
        killed = False
        if process.poll() is None:
            self._signal(self.stop_signal, group=self.signal_group)
            wait_s = self.stop_timeout_s if timeout_s is None else timeout_s
            try:
                process.wait(wait_s)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored its stop signal for %g s: killing it", self.name, process.pid, wait_s)
                killed = _kill_group(process)
        self._finish(killed=killed, began=began)
        return self.returncode

    def _finish(self, *, killed: bool, began: float | None = None) -> None:
        """After the leader is gone: the rest of the group, the unclean-exit cleanup, the log, the finalizer."""
        process = self.process
        if process is None:
            return
        began = time.monotonic() if began is None else began
        if _wait_group_gone(process.pid, self.group_grace_s):  # e.g. stubs outlive a dead server for a moment
            killed = _kill_group(process) or killed
            _wait_group_gone(process.pid, 5.0)  # SIGKILL lands asynchronously: return once it has
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
        self.returncode = process.returncode
        if (killed or process.returncode != 0) and self.on_unclean_exit is not None:
            self.on_unclean_exit()
        self.stopped_after_s = time.monotonic() - began
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._close_log()
        self.process = None

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _dying_with_parent(command: list[str], signum: int | None) -> list[str]:
    """``command`` run through util-linux's ``setpriv --pdeathsig``: the kernel sends ``signum`` once the launching
    thread dies. setpriv sets it after Popen changed the user (which would clear it) and execs the server, so the
    pid stays the server's. Not a ``preexec_fn``: Python code between fork and exec can deadlock or abort in a
    process with other threads (gRPC's, the watchdog's). Unchanged off Linux, without setpriv, without a signal,
    or off the main thread (a worker thread ends long before the process, and its death would stop the server)."""
    if signum is None or not sys.platform.startswith("linux") or shutil.which("setpriv") is None:
        return command
    if threading.current_thread() is not threading.main_thread():
        return command
    return ["setpriv", "--pdeathsig", signal.Signals(signum).name.removeprefix("SIG"), *command]


def _wait_group_gone(pgid: int, timeout_s: float) -> bool:
    """Wait for the group to empty; True if members remain after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while group_members(pgid):
        if time.monotonic() > deadline:
            return True
        time.sleep(0.05)
    return False


def _kill_group(process: subprocess.Popen[bytes]) -> bool:
    """SIGKILL the process group of ``process`` and reap it; True if anything was there to kill."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    return True


def _kill_and_clean(process: subprocess.Popen[bytes], cleanup: Callable[[], object] | None) -> None:
    """Last resort at interpreter exit for a server nobody stopped."""
    _kill_group(process)
    if cleanup is not None:
        cleanup()
