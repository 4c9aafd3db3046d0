"""The whole local stack in one object: PostgreSQL, Triton, the feedback writer, the gateway(s) and NGINX
(Prometheus too, when asked), each a real server on 127.0.0.1, started in dependency order and stopped in reverse.

Before anything starts, :meth:`LocalStack.preflight` refuses (one line) a stack already up from the same folder
(its state file), a PostgreSQL this stack did not start running on its data folder, an experiment naming a model
the repository does not have, and any port in use (naming what holds it). As each server comes up the state file
(``<workdir>/state.json``, :mod:`recsys.stack.state`) records it; stopping removes the file. Every server gets a
parent-death signal, so none outlives a supervisor that was killed.

``recsys stack up`` and ``recsys demo`` run it; the integration tests start one on free ports and stop, kill and
restart its parts to test outages.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

from gateway.experiment import Experiment, load_experiment
from recsys.core.errors import ArtifactError, ConfigError
from recsys.stack.credentials import stack_secret
from recsys.stack.nginx import LocalNginx
from recsys.stack.pids import ProcessId
from recsys.stack.ports import check_ports_free, free_port, free_ports
from recsys.stack.postgres import LocalPostgres, default_data_dir
from recsys.stack.process import ServiceError, ServiceProcess
from recsys.stack.prometheus import LocalPrometheus
from recsys.stack.state import (
    STATE_FILE,
    ServiceRecord,
    StackState,
    StackStateError,
    read_state,
    remove_state,
    write_state,
)
from recsys.stack.triton import KEY_FILE, TritonConfig, TritonPorts, TritonServer
from recsys.stack.triton.watchdog import TritonWatchdog

if TYPE_CHECKING:
    from recsys.core.settings import Settings
    from trainer.ann import AnnPolicy
    from trainer.triton.family import Family

__all__ = ["LocalStack", "ServiceError", "ServiceProcess", "StackConfig", "StackPorts", "free_port"]

#: hosts a ``RECSYS_DATABASE_URL`` may name for the local stack's own PostgreSQL
LOOPBACK = ("127.0.0.1", "localhost", "::1")

log = logging.getLogger(__name__)


def _writer_database_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
            return bool(json.loads(response.read()).get("database"))
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class StackPorts:
    """Every port of the stack. Gateway n (n = 1, 2, ...) beyond the first listens on ``more_gateways[n - 1]``
    (REST, gRPC); when that is not given, on the first gateway's ports + 100 n (REST) and + n (gRPC)."""

    nginx: int = 8088
    gateway: int = 8080
    gateway_grpc: int = 50051
    feedback: int = 8090
    postgres: int = 5433
    triton_http: int = 8000
    triton_grpc: int = 8001
    triton_metrics: int = 8002
    prometheus: int = 9090
    more_gateways: tuple[tuple[int, int], ...] = ()

    @classmethod
    def free(cls, gateways: int = 1) -> StackPorts:
        """Free ports for every service and ``gateways`` gateways (tests run beside a developer's stack)."""
        nginx, gateway, grpc, feedback, postgres, http, triton_grpc, metrics, prometheus, *extra = free_ports(
            9 + 2 * (gateways - 1)
        )  # held open together: all distinct
        more = tuple(zip(extra[::2], extra[1::2], strict=True))
        return cls(nginx, gateway, grpc, feedback, postgres, http, triton_grpc, metrics, prometheus, more)

    @classmethod
    def from_settings(cls, settings: Settings) -> StackPorts:
        """The ports of the settings (``RECSYS_*_PORT``; PostgreSQL's is the one of ``RECSYS_DATABASE_URL``)."""
        url = urllib.parse.urlsplit(settings.database_url.get_secret_value())
        try:
            host, postgres = url.hostname, url.port or 5432
        except ValueError as exc:
            raise ConfigError(f"RECSYS_DATABASE_URL: {exc}") from None
        if host not in LOOPBACK:
            raise ConfigError(
                f"RECSYS_DATABASE_URL points at {host}: the local stack runs its own PostgreSQL on 127.0.0.1 "
                "(set it to postgresql://recsys@127.0.0.1:PORT/recsys to choose its port)"
            )
        return cls(
            nginx=settings.nginx_port,
            gateway=settings.gateway_port,
            gateway_grpc=settings.gateway_grpc_port,
            feedback=settings.feedback_port,
            postgres=postgres,
            triton_http=settings.triton_http_port,
            triton_grpc=settings.triton_grpc_port,
            triton_metrics=settings.triton_metrics_port,
            prometheus=settings.prometheus_port,
        )

    def gateway_ports(self, n: int) -> tuple[int, int]:
        """(REST, gRPC) of gateway n (0 is the first)."""
        if n == 0:
            return self.gateway, self.gateway_grpc
        if n <= len(self.more_gateways):
            return self.more_gateways[n - 1]
        return self.gateway + 100 * n, self.gateway_grpc + n

    def entries(self, gateways: int, *, prometheus: bool) -> list[tuple[str, str, int]]:
        """(key, what uses it and the setting that chooses it, port) of every port the stack binds."""
        entries = [("nginx", "NGINX (RECSYS_NGINX_PORT)", self.nginx)]
        for n in range(gateways):
            rest, grpc = self.gateway_ports(n)
            which, key = (f"gateway {n + 1}", f"gateway_{n + 1}") if gateways > 1 else ("the gateway", "gateway")
            entries += [
                (key, f"{which} REST (RECSYS_GATEWAY_PORT{f' + {100 * n}' if n else ''})", rest),
                (f"{key}_grpc", f"{which} gRPC (RECSYS_GATEWAY_GRPC_PORT{f' + {n}' if n else ''})", grpc),
            ]
        entries += [
            ("feedback", "the feedback writer (RECSYS_FEEDBACK_PORT)", self.feedback),
            ("postgres", "PostgreSQL (the port of RECSYS_DATABASE_URL)", self.postgres),
            ("triton_http", "Triton HTTP (RECSYS_TRITON_HTTP_PORT)", self.triton_http),
            ("triton_grpc", "Triton gRPC (RECSYS_TRITON_GRPC_PORT)", self.triton_grpc),
            ("triton_metrics", "Triton metrics (RECSYS_TRITON_METRICS_PORT)", self.triton_metrics),
        ]
        if prometheus:
            entries.append(("prometheus", "Prometheus (RECSYS_PROMETHEUS_PORT)", self.prometheus))
        return entries

    def named(self, gateways: int, *, prometheus: bool) -> dict[str, int]:
        """What uses each port (with its setting) -> the port, for the checks and their messages."""
        return {what: port for _, what, port in self.entries(gateways, prometheus=prometheus)}


@dataclass
class StackConfig:
    model_repository: Path
    workdir: Path = Path(".cache/stack")
    ports: StackPorts = field(default_factory=StackPorts)
    experiment_file: Path = Path("gateway/experiment.yaml")
    postgres_dir: Path | None = None  # default: recsys.stack.postgres.default_data_dir()
    gateways: int = 1  # >1 puts several gateways behind NGINX (it retries the next one when one is down)
    nginx_rate_per_s: int = 5000
    nginx_burst: int = 2000
    triton_timeout_ms: int = 500
    prometheus: bool = False  # also run Prometheus, scraping the gateways, the writer and Triton
    scrape_interval: str = "5s"
    families: tuple[Family, ...] | None = None  # what load_models loads (default: every family of the repository)
    # More Prometheus targets by job, e.g. {"loop": ("127.0.0.1:9108",)} for `recsys retrain --metrics-port 9108`;
    # a job of the committed config not named here and not run by the stack (loop) gets no target.
    extra_targets: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # A real inference through every served model each second; a dead python stub's model is loaded again, Triton
    # restarted when probes fail this long (recsys.stack.triton.watchdog). 0 turns the watchdog off.
    watchdog_interval_s: float = 1.0
    watchdog_restart_after_s: float = 20.0
    # The approximate index's policy and gate when a start publishes the canary's first version (RECSYS_ANN_*:
    # `recsys stack up` passes AnnPolicy.from_settings); None: the lineage's kind with the default gate.
    ann: AnnPolicy | None = None


class LocalStack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        ports = config.ports
        work = config.workdir.resolve()
        self.experiment: Experiment = load_experiment(config.experiment_file)
        # the writer's intake token, generated once into the work folder (0600): the writer and gateways get it
        self.feedback_token = stack_secret(work / "feedback-token")
        # Triton's key (every API but health; recsys.stack.triton.config.RESTRICTED_APIS), made the same way
        self.triton_key = stack_secret(work / KEY_FILE)
        self.postgres = LocalPostgres(config.postgres_dir or default_data_dir(), port=ports.postgres)
        self.triton = TritonServer(
            TritonConfig(
                model_repository=config.model_repository,
                ports=TritonPorts(ports.triton_http, ports.triton_grpc, ports.triton_metrics),
                workdir=work / "triton",
                env=(("RECSYS_DATABASE_URL", self.postgres.url),),  # the lookup's live fold-in reads new clicks
                api_key=self.triton_key,
            )
        )
        python = [sys.executable, "-m", "recsys"]
        self.writer = ServiceProcess(
            name="feedback-writer",
            command=[*python, "serve", "feedback"],
            ready_url=f"http://127.0.0.1:{ports.feedback}/healthz",
            log_path=work / "logs" / "feedback-writer.log",
            env=self.env(),
        )
        self.gateways = [
            ServiceProcess(
                name=f"gateway-{n}",
                command=[*python, "serve", "gateway"],
                ready_url=f"http://127.0.0.1:{self.gateway_port(n)}/healthz",
                log_path=work / "logs" / f"gateway-{n}.log",
                env=self.env() | {
                    "RECSYS_GATEWAY_PORT": str(ports.gateway_ports(n)[0]),
                    "RECSYS_GATEWAY_GRPC_PORT": str(ports.gateway_ports(n)[1]),
                },
            )
            for n in range(config.gateways)
        ]  # fmt: skip
        self.nginx_site = LocalNginx(
            prefix=work / "nginx",
            port=ports.nginx,
            upstreams=[f"127.0.0.1:{self.gateway_port(n)}" for n in range(config.gateways)],
            experiment=self.experiment,
            rate_per_s=config.nginx_rate_per_s,
            burst=config.nginx_burst,
        )
        self.nginx: ServiceProcess | None = None
        self.prometheus_site = LocalPrometheus(
            workdir=work / "prometheus",
            port=ports.prometheus,
            targets={
                "gateway": [f"127.0.0.1:{self.gateway_port(n)}" for n in range(config.gateways)],
                "feedback": [f"127.0.0.1:{ports.feedback}"],
                "triton": [f"127.0.0.1:{ports.triton_metrics}"],
                "loop": [],
            }
            | {job: list(addresses) for job, addresses in config.extra_targets.items()},
            scrape_interval=config.scrape_interval,
        )
        self.prometheus: ServiceProcess | None = None
        self.watchdog: TritonWatchdog | None = None
        self.versions: dict[str, int] = {}
        self._supervisor: ProcessId | None = None
        self._started_at = datetime.now(UTC)

    def gateway_port(self, n: int) -> int:
        """REST port of gateway n (0 is the first; see :class:`StackPorts`)."""
        return self.config.ports.gateway_ports(n)[0]

    @property
    def state_path(self) -> Path:
        return self.config.workdir.resolve() / STATE_FILE

    def env(self) -> dict[str, str]:
        """The environment of the stack's own processes: where everything else is."""
        ports = self.config.ports
        return dict(os.environ) | {
            "RECSYS_TRITON_URL": f"127.0.0.1:{ports.triton_grpc}",
            "RECSYS_TRITON_TIMEOUT_MS": str(self.config.triton_timeout_ms),
            "RECSYS_TRITON_API_KEY": self.triton_key,
            "RECSYS_GATEWAY_PORT": str(ports.gateway),
            "RECSYS_GATEWAY_GRPC_PORT": str(ports.gateway_grpc),
            "RECSYS_FEEDBACK_URL": self.feedback_url,
            "RECSYS_FEEDBACK_PORT": str(ports.feedback),
            "RECSYS_FEEDBACK_TOKEN": self.feedback_token,
            "RECSYS_DATABASE_URL": self.postgres.url,
            "RECSYS_SPOOL_DIR": str(self.config.workdir.resolve() / "spool"),
            "RECSYS_EXPERIMENT_FILE": str(self.config.experiment_file.resolve()),
            "RECSYS_EXPERIMENT": "",  # NGINX splits by the file: an inline experiment must not win in the gateway
            "RECSYS_LOG_LEVEL": os.environ.get("RECSYS_LOG_LEVEL", "INFO"),
        }

    @property
    def nginx_url(self) -> str:
        return self.nginx_site.url

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.config.ports.gateway}"

    @property
    def gateway_grpc(self) -> str:
        return f"127.0.0.1:{self.config.ports.gateway_grpc}"

    @property
    def feedback_url(self) -> str:
        return f"http://127.0.0.1:{self.config.ports.feedback}"

    @property
    def database_url(self) -> str:
        return self.postgres.url

    def start(self) -> Self:
        """Checks (:meth:`preflight`), then starts every server in order, recording each in the state file; if
        one fails, stops what started and raises. Nothing starts when a check fails."""
        self.preflight()
        self._supervisor = ProcessId.of(os.getpid())
        self._started_at = datetime.now(UTC)
        try:
            log.info("starting PostgreSQL on 127.0.0.1:%d", self.config.ports.postgres)
            self.postgres.start()
            self.save_state()
            log.info("starting Triton (gRPC 127.0.0.1:%d)", self.config.ports.triton_grpc)
            self.triton.start()
            self.save_state()
            self.load_models()
            self.start_watchdog()
            log.info("starting the feedback writer on %s", self.feedback_url)
            self.writer.start()
            self.save_state()
            self.wait_writer_database()
            for gateway in self.gateways:
                log.info("starting %s", gateway.name)
                gateway.start()
                self.save_state()
            log.info("starting NGINX on %s", self.nginx_url)
            nginx = self.nginx_site.process()
            nginx.death_signal = signal.SIGTERM  # its fast stop: a graceful one waits for idle keep-alives
            self.nginx = nginx.start()
            if self.config.prometheus:
                log.info("starting Prometheus on %s", self.prometheus_site.url)
                self.save_state()
                self.prometheus = self.prometheus_site.process().start()
            self.save_state("up")
        except BaseException:
            self.stop()
            raise
        return self

    # --- checks before anything starts ----------------------------------------------------------------------
    def preflight(self) -> None:
        """One-line errors, before anything starts: a stack already up from this folder, a PostgreSQL someone else
        runs on the data folder, an experiment model the repository does not have, a port in use."""
        self._check_no_stack_here()
        postgres_ours = self._postgres_ours()
        if not postgres_ours and self.postgres.initialized() and self.postgres.is_running():
            pid = _postmaster_pid(self.postgres.data_dir)
            raise StackStateError(
                f"a PostgreSQL this stack did not start runs on its data folder {self.postgres.data_dir}"
                f"{f' (pid {pid})' if pid else ''}: stop it, or give the stack another folder (RECSYS_POSTGRES_DIR)"
            )
        self.check_experiment()
        ports = self.config.ports.named(self.config.gateways, prometheus=self.config.prometheus)
        if postgres_ours:  # started by this object already (tests reset its database first)
            ports = {name: port for name, port in ports.items() if port != self.config.ports.postgres}
        check_ports_free(ports)

    def _check_no_stack_here(self) -> None:
        state = read_state(self.state_path)
        if state is None:
            return
        running = state.running()
        if state.supervisor.alive():
            raise StackStateError(
                f"a stack is already up from {self.config.workdir} (supervisor pid {state.supervisor.pid}, started "
                f"{state.started_at:%Y-%m-%d %H:%M:%S %Z}): `recsys stack status` shows it, `recsys stack down` "
                f"stops it (with RECSYS_STACK_DIR={self.config.workdir})"
            )
        if running:
            names = ", ".join(f"{s.name} (pid {s.process.pid})" for s in running)
            raise StackStateError(
                f"the stack of supervisor pid {state.supervisor.pid} (gone) still runs {names}: `recsys stack down` "
                f"stops it (with RECSYS_STACK_DIR={self.config.workdir})"
            )
        remove_state(self.state_path, state.supervisor)  # a stack that is gone entirely

    def _postgres_ours(self) -> bool:
        """True when PostgreSQL on the data folder was started by this process (its postmaster is our child)."""
        pid = _postmaster_pid(self.postgres.data_dir)
        seen = None if pid is None else _parent_of(pid)
        return seen == os.getpid()

    def check_experiment(self) -> None:
        """Every model the experiment names is an ensemble that the newest version of a family published in the
        repository serves (or the canary of one, which :meth:`load_models` loads): a one-line error naming the
        group and model otherwise (``recsys_ann`` of a version published without an approximate index, too)."""
        from trainer.triton.family import FAMILIES
        from trainer.triton.repository import (
            check_configs,
            lacking_ensembles,
            published_families,
            versions,
            why_not_served,
        )

        repository = self.config.model_repository
        families = published_families(repository, self.config.families or FAMILIES)
        if not families:
            raise ArtifactError(f"{repository}: no complete published version (run `recsys publish RUN_DIR` first)")
        for published in families:
            check_configs(repository, published)
        newest = {family.name: versions(repository, family)[-1] for family in families}
        lacking = {name: f for f in families for name in lacking_ensembles(repository, f, newest[f.name])}
        served = {name for f in families for name in f.ensembles if name not in lacking}
        canary = self._canary(families)
        canaries = set() if canary is None else set(canary.ensembles)
        also = "; a canary group may add _canary to each" if canaries else ""
        for group in self.experiment.groups:
            if (family := lacking.get(group.model)) is not None:
                raise ConfigError(
                    f"the experiment {self.config.experiment_file} gives group {group.name} the model "
                    f"{group.model!r}, which {repository} does not serve: {why_not_served(family, newest[family.name])}"
                )
            if group.model not in served | canaries:
                raise ConfigError(
                    f"the experiment {self.config.experiment_file} gives group {group.name} the model "
                    f"{group.model!r}, which the model repository {repository} does not have "
                    f"(it serves {', '.join(sorted(served))}{also})"
                )

    @staticmethod
    def _canary(families: list[Family]) -> Family | None:
        """The canary family (``recsys retrain --canary``) when the factor family it renames is published."""
        from recsys.loop.canary import canary_of
        from trainer.triton.family import FACTOR

        return canary_of(FACTOR) if any(family.name == FACTOR.name for family in families) else None

    # --- models and state -------------------------------------------------------------------------------------
    def load_models(self) -> None:
        """The newest published version of every family in the repository, ensembles pinned to it; the canary
        family too when the experiment routes a group to it (so that group is never answered by a missing model)."""
        from recsys.loop.canary import ensure_canary
        from trainer.triton.family import FAMILIES
        from trainer.triton.repository import load_all, published_families

        repository = self.config.model_repository
        families = self.config.families or FAMILIES
        self.versions = load_all(self.triton, repository, families)
        canary = self._canary(published_families(repository, families))
        if canary is not None and set(self.experiment.models) & set(canary.ensembles):
            self.versions[canary.name] = ensure_canary(repository, self.triton, ann=self.config.ann)
        self.save_state()

    def start_watchdog(self) -> None:
        """Keeps every served model answering (see :class:`TritonWatchdog`); the restart is its last resort."""
        if self.config.watchdog_interval_s <= 0 or self.watchdog is not None:
            return
        self.watchdog = TritonWatchdog(
            self.triton.control, self.triton.urls.grpc, self.served_models,
            api_key=self.triton_key, interval_s=self.config.watchdog_interval_s,
            restart_after_s=self.config.watchdog_restart_after_s, restart=self.restart_triton,
            server=lambda: self.triton.pid,
        ).start()  # fmt: skip

    def served_models(self) -> list[str]:
        """The public models of the families loaded (ensembles, the canary's too), as their loaded versions serve
        them (``recsys_ann`` only for a version with an approximate index)."""
        from recsys.loop.canary import canary_of
        from trainer.triton.family import FACTOR, FAMILIES
        from trainer.triton.repository import version_ensembles

        repository = self.config.model_repository
        families = [family for family in (*FAMILIES, canary_of(FACTOR)) if family.name in self.versions]
        return [name for f in families for name in version_ensembles(repository, f, self.versions[f.name])]

    def restart_triton(self) -> None:
        """Stops Triton (SIGKILL after its stop timeout), starts it again and loads the served versions."""
        self.triton.stop()
        self.triton.start()
        self.load_models()

    def save_state(self, phase: str = "starting") -> None:
        """Writes what runs now into the state file (a no-op until :meth:`start` has begun)."""
        if self._supervisor is None:
            return
        config = self.config
        write_state(
            self.state_path,
            StackState(
                supervisor=self._supervisor,
                started_at=self._started_at,
                phase="up" if phase == "up" else "starting",
                workdir=str(config.workdir.resolve()),
                repository=str(config.model_repository.resolve()),
                experiment=str(config.experiment_file.resolve()),
                ports={key: port for key, _, port in
                       config.ports.entries(config.gateways, prometheus=config.prometheus)},
                versions=self.versions,
                services=tuple(self._records()),
            ),
        )  # fmt: skip

    def _records(self) -> list[ServiceRecord]:
        ports, records = self.config.ports, []
        postgres_pid = _postmaster_pid(self.postgres.data_dir) if self.postgres.initialized() else None
        seen = None if postgres_pid is None else ProcessId.of(postgres_pid)
        if seen is not None:
            records.append(
                ServiceRecord(
                    name="postgresql", process=seen, ports={"postgres": ports.postgres},
                    health=f"tcp://127.0.0.1:{ports.postgres}", stop_signal=int(signal.SIGINT),
                    log=str(self.postgres.log_path),
                )
            )  # fmt: skip
        triton = None if self.triton.pid is None else ProcessId.of(self.triton.pid)
        if triton is not None:
            records.append(
                ServiceRecord(
                    name="tritonserver", process=triton,
                    ports={"http": ports.triton_http, "grpc": ports.triton_grpc, "metrics": ports.triton_metrics},
                    health=f"http://127.0.0.1:{ports.triton_http}/v2/health/ready", stop_signal=int(signal.SIGTERM),
                    log=str(self.triton.log_path),
                )
            )  # fmt: skip
        parts: list[tuple[ServiceProcess | None, dict[str, int], str]] = [
            (self.writer, {"http": ports.feedback}, f"{self.feedback_url}/readyz")
        ]
        for n, gateway in enumerate(self.gateways):
            rest, grpc = ports.gateway_ports(n)
            parts.append((gateway, {"http": rest, "grpc": grpc}, f"http://127.0.0.1:{rest}/readyz"))
        parts.append((self.nginx, {"http": ports.nginx}, f"{self.nginx_url}/nginx-health"))
        parts.append((self.prometheus, {"http": ports.prometheus}, f"{self.prometheus_site.url}/-/ready"))
        for part, part_ports, health in parts:
            process = None if part is None or part.pid is None else ProcessId.of(part.pid)
            if part is not None and process is not None:
                records.append(
                    ServiceRecord(name=part.name, process=process, ports=part_ports, health=health,
                                  stop_signal=int(part.stop_signal), log=str(part.log_path))
                )  # fmt: skip
        return records

    def wait_writer_database(self, timeout_s: float = 30.0) -> None:
        """Until the writer has reached PostgreSQL (and applied the migrations)."""
        deadline = time.monotonic() + timeout_s
        while not _writer_database_up(self.feedback_url):
            if time.monotonic() > deadline:
                raise ServiceError(f"the feedback writer did not reach PostgreSQL in {timeout_s:.0f} s")
            time.sleep(0.05)

    def wait_drained(self, timeout_s: float = 60.0) -> None:
        """Until every impression the gateways hold and every spooled event is in PostgreSQL."""
        deadline = time.monotonic() + timeout_s
        while not self._drained():
            if time.monotonic() > deadline:
                raise ServiceError(f"events still on their way to PostgreSQL after {timeout_s:.0f} s")
            time.sleep(0.1)

    def _drained(self) -> bool:
        try:
            with urllib.request.urlopen(self.feedback_url + "/readyz", timeout=2) as response:
                writer = json.loads(response.read())
            pending = 0.0
            for n in range(self.config.gateways):
                url = f"http://127.0.0.1:{self.gateway_port(n)}/readyz"
                with urllib.request.urlopen(url, timeout=2) as response:
                    pending += json.loads(response.read()).get("impressions_pending", 0)
        except (OSError, ValueError):
            return False
        return bool(writer.get("database")) and writer.get("spooled") == 0 and pending == 0

    def stop(self) -> None:
        """Stops everything that runs, in reverse order; PostgreSQL last (the writer drains into it first), and
        only if this process started it. Then the state file goes."""
        if self.watchdog is not None:
            self.watchdog.close()
            self.watchdog = None
        for part in (self.prometheus, self.nginx, *reversed(self.gateways), self.writer):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.stop()
        with contextlib.suppress(Exception):
            self.triton.stop()
        if self._postgres_ours():
            with contextlib.suppress(Exception):
                self.postgres.stop()
        if self._supervisor is not None:
            remove_state(self.state_path, self._supervisor)
            self._supervisor = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _postmaster_pid(data_dir: Path) -> int | None:
    """The postmaster's pid from its lock file (the first line of ``postmaster.pid``), if there is one."""
    try:
        first = (data_dir / "postmaster.pid").read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])
