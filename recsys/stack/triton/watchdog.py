"""Keeps a running Triton's public models answering without a human: a real inference per model every second; a
step whose python stub died is loaded again, and the server restarted when that does not bring it back.

What Triton 2.51 does when a python-backend stub dies (SIGKILL, the OOM killer), measured: nothing. The model and
its ensembles stay READY (``/v2/models/<name>/ready`` answers 200), every request through it fails with INTERNAL
``Stub process '<model>_<group>_<n>' is not healthy.``, for good; a load of the unchanged config is skipped. So
readiness cannot see it and only a real request can. :meth:`TritonWatchdog.check` sends one per model (an unknown
listener, top 1), reads the dead stub's model from the error, and loads that model again with its served config
(:meth:`TritonControl.restart_model`: new stubs, same pins). A probe that keeps failing for ``restart_after_s``
(a failure without a named stub, or a reload that did not help) calls ``restart``, the last resort the owner
supplies (the local stack restarts Triton and loads its models). In a pod, ``serving.liveness`` is the probe that
reads the same error and lets the kubelet restart the container.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from recsys.core.errors import RecsysError
from recsys.core.triton_client import TritonCallError, TritonRecommender
from recsys.stack.triton.control import TritonControl
from serving.liveness import PROBE_USER, STUB_DEAD, dead_stub_model

__all__ = ["PROBE_USER", "STUB_DEAD", "TritonWatchdog", "WatchdogStats", "dead_stub_model"]

log = logging.getLogger(__name__)


@dataclass
class WatchdogStats:
    """What the watchdog saw and did since it started (also logged as it happens)."""

    probes: int = 0
    failures: int = 0
    reloads: int = 0
    restarts: int = 0
    #: seconds from the first failed probe of an episode to the next probe that answered, per episode
    recoveries_s: list[float] = field(default_factory=list)
    #: the last failure's message
    last_error: str = ""


class TritonWatchdog:
    """Probes ``models()`` (the public models to keep answering) every ``interval_s`` in a thread of its own."""

    def __init__(
        self,
        control: TritonControl,
        grpc_url: str,
        models: Callable[[], Iterable[str]],
        *,
        api_key: str | None = None,
        interval_s: float = 1.0,
        probe_timeout_s: float = 2.0,
        restart_after_s: float = 20.0,
        restart: Callable[[], None] | None = None,
        server: Callable[[], object] | None = None,
    ) -> None:
        self.control = control
        self.models = models
        self.interval_s = interval_s
        self.restart_after_s = restart_after_s
        self.restart = restart
        #: identifies the server process: a new one starts a new episode; None: stopped on purpose, not probed
        self.server = server
        self._server_seen: object = None
        self.stats = WatchdogStats()
        self._client = TritonRecommender(grpc_url, timeout_s=probe_timeout_s, api_key=api_key)
        self._failing_since: float | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def probe(self, model: str) -> str | None:
        """One real inference through ``model``: None when it answered, else the error's text."""
        self.stats.probes += 1
        try:
            self._client.recommend(model, [PROBE_USER], top_k=1)
        except TritonCallError as exc:
            return f"{exc.status}: {exc}"
        return None

    def check(self) -> list[str]:
        """Probes every model once and repairs what failed; returns the failures' messages (empty: all answered).

        Only models Triton lists as READY are probed: one being loaded or unloaded is someone's work in progress
        (a hot swap, a start), not a fault. A server whose control plane does not answer counts as failing; one
        its owner stopped (``server()`` is None) is left alone."""
        if self.server is not None and self.server() is None:
            self._failing_since = None
            return []
        try:
            ready = {str(e["name"]) for e in self.control.repository_index() if e.get("state") == "READY"}
            failures = [
                f"{model}: {error}"
                for model in self.models()
                if model in ready and (error := self.probe(model)) is not None
            ]
        except RecsysError as exc:
            failures = [f"Triton does not answer: {exc}"]
        now = time.monotonic()
        server = None if self.server is None else self.server()
        if server != self._server_seen:  # restarted meanwhile (by us or its owner): its failures start afresh
            self._server_seen, self._failing_since = server, None
        if not failures:
            if self._failing_since is not None:
                took = now - self._failing_since
                self.stats.recoveries_s.append(took)
                log.warning("triton watchdog: every model answers again, %.1f s after the first failed probe", took)
            self._failing_since = None
            return failures
        self.stats.failures += len(failures)
        self.stats.last_error = failures[-1]
        if self._failing_since is None:
            self._failing_since = now
            log.error("triton watchdog: a probe failed: %s", "; ".join(failures))
        dead = sorted({model for failure in failures if (model := dead_stub_model(failure)) is not None})
        for model in dead:
            self._reload(model)
        if now - self._failing_since >= self.restart_after_s and self.restart is not None:
            self._restart(failures)
        return failures

    def _reload(self, model: str) -> None:
        began = time.monotonic()
        try:
            self.control.restart_model(model)
        except RecsysError as exc:
            log.error("triton watchdog: reloading %s (its python stub died) failed: %s", model, exc)
            return
        self.stats.reloads += 1
        log.warning(
            "triton watchdog: %s's python stub had died; loaded it again in %.1f s", model, time.monotonic() - began
        )

    def _restart(self, failures: list[str]) -> None:
        assert self.restart is not None
        log.error(
            "triton watchdog: probes failing for %.0f s (%s): restarting Triton",
            self.restart_after_s, "; ".join(failures),
        )  # fmt: skip
        self.stats.restarts += 1
        try:
            self.restart()
        except Exception:  # reported; the next period tries again
            log.exception("triton watchdog: restarting Triton failed")
        self._failing_since = time.monotonic()  # the next restart only after another full period

    # --- the thread ----------------------------------------------------------------------------------------------
    def start(self) -> TritonWatchdog:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._loop, name="triton-watchdog", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No probes inside the block (a test that wants to watch a fault before it is repaired)."""
        running = self._thread is not None
        self.stop()
        try:
            yield
        finally:
            if running:
                self.start()

    def close(self) -> None:
        self.stop()
        self._client.close()

    def _loop(self) -> None:
        while not self._stopping.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # a watchdog that dies is worse than one that logs
                log.exception("triton watchdog: a check failed")


def main(argv: list[str] | None = None) -> int:
    """``python -m recsys.stack.triton.watchdog``: one check of the Triton the settings name (every READY ensemble
    probed; a dead stub's model loaded again), for a Kubernetes liveness probe. Exit 1
    only when a probe still fails after that repair (the kubelet then restarts the container, which loads the newest
    good versions); overload or a model being loaded is not a reason to kill the server."""
    import argparse

    from recsys.core.settings import get_settings
    from recsys.stack.ports import connect_host
    from recsys.stack.triton.config import TritonUrls

    parser = argparse.ArgumentParser(prog="python -m recsys.stack.triton.watchdog", description=main.__doc__)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per probe and control call")
    args = parser.parse_args(argv)
    settings = get_settings()
    host = connect_host(settings.triton_host)
    key = settings.triton_api_key.get_secret_value() or None
    urls = TritonUrls(
        http=f"{host}:{settings.triton_http_port}", grpc=f"{host}:{settings.triton_grpc_port}", metrics=""
    )
    control = TritonControl(urls, timeout_s=max(args.timeout, 60.0), api_key=key)

    def ensembles() -> list[str]:
        """The loaded ensembles (every public model of the repository is one; their steps fail through them)."""
        loaded = [str(e["name"]) for e in control.repository_index() if e.get("state") == "READY"]
        return [name for name in loaded if control.model_config(name).get("platform") == "ensemble"]

    watchdog = TritonWatchdog(control, urls.grpc, ensembles, api_key=key, probe_timeout_s=args.timeout)
    try:
        first = watchdog.check()
        dead = [failure for failure in first if dead_stub_model(failure) is not None]
        if not dead:
            return 0
        left = [failure for failure in watchdog.check() if dead_stub_model(failure) is not None]
        for failure in left:
            print(f"triton watchdog: still failing after a reload: {failure}")
        return 1 if left else 0
    finally:
        watchdog.close()


if __name__ == "__main__":
    raise SystemExit(main())
