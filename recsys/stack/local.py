"""The whole local stack in one object: PostgreSQL, Triton, the feedback writer, the gateway(s) and NGINX
(Prometheus too, when asked), each a real server on 127.0.0.1, started in dependency order and stopped in reverse.

``recsys stack up`` and ``recsys demo`` run it; the integration tests start one on free ports and stop, kill and
restart its parts to test outages.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import urllib.request
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

from gateway.experiment import Experiment, load_experiment
from recsys.stack.nginx import LocalNginx
from recsys.stack.ports import free_port, free_ports
from recsys.stack.postgres import LocalPostgres, default_data_dir
from recsys.stack.process import ServiceError, ServiceProcess
from recsys.stack.prometheus import LocalPrometheus
from recsys.stack.triton import TritonConfig, TritonPorts, TritonServer

if TYPE_CHECKING:
    from trainer.triton.family import Family

__all__ = ["LocalStack", "ServiceError", "ServiceProcess", "StackConfig", "StackPorts", "free_port"]

log = logging.getLogger(__name__)


def _writer_database_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
            return bool(json.loads(response.read()).get("database"))
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class StackPorts:
    nginx: int = 8088
    gateway: int = 8080
    gateway_grpc: int = 50051
    feedback: int = 8090
    postgres: int = 5433
    triton_http: int = 8000
    triton_grpc: int = 8001
    triton_metrics: int = 8002
    prometheus: int = 9090

    @classmethod
    def free(cls) -> StackPorts:
        """Free ports for every service (tests run beside a developer's stack without colliding)."""
        return cls(*free_ports(len(fields(cls))))  # held open together: all distinct


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


class LocalStack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        ports = config.ports
        work = config.workdir.resolve()
        self.experiment: Experiment = load_experiment(config.experiment_file)
        self.postgres = LocalPostgres(config.postgres_dir or default_data_dir(), port=ports.postgres)
        self.triton = TritonServer(
            TritonConfig(
                model_repository=config.model_repository,
                ports=TritonPorts(ports.triton_http, ports.triton_grpc, ports.triton_metrics),
                workdir=work / "triton",
                env=(("RECSYS_DATABASE_URL", self.postgres.url),),  # the lookup's live fold-in reads new clicks
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
                    "RECSYS_GATEWAY_PORT": str(self.gateway_port(n)),
                    "RECSYS_GATEWAY_GRPC_PORT": str(ports.gateway_grpc + n if n else ports.gateway_grpc),
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

    def gateway_port(self, n: int) -> int:
        """Gateway n listens on the configured port + 100 n (n = 0 on the configured one)."""
        return self.config.ports.gateway + 100 * n

    def env(self) -> dict[str, str]:
        """The environment of the stack's own processes: where everything else is."""
        ports = self.config.ports
        return dict(os.environ) | {
            "RECSYS_TRITON_URL": f"127.0.0.1:{ports.triton_grpc}",
            "RECSYS_TRITON_TIMEOUT_MS": str(self.config.triton_timeout_ms),
            "RECSYS_GATEWAY_PORT": str(ports.gateway),
            "RECSYS_GATEWAY_GRPC_PORT": str(ports.gateway_grpc),
            "RECSYS_FEEDBACK_URL": self.feedback_url,
            "RECSYS_FEEDBACK_PORT": str(ports.feedback),
            "RECSYS_DATABASE_URL": self.postgres.url,
            "RECSYS_SPOOL_DIR": str(self.config.workdir.resolve() / "spool"),
            "RECSYS_EXPERIMENT_FILE": str(self.config.experiment_file.resolve()),
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
        try:
            log.info("starting PostgreSQL on 127.0.0.1:%d", self.config.ports.postgres)
            self.postgres.start()
            log.info("starting Triton (gRPC 127.0.0.1:%d)", self.config.ports.triton_grpc)
            self.triton.start()
            self.load_models()
            log.info("starting the feedback writer on %s", self.feedback_url)
            self.writer.start()
            self.wait_writer_database()
            for gateway in self.gateways:
                log.info("starting %s", gateway.name)
                gateway.start()
            log.info("starting NGINX on %s", self.nginx_url)
            self.nginx = self.nginx_site.process().start()
            if self.config.prometheus:
                log.info("starting Prometheus on %s", self.prometheus_site.url)
                self.prometheus = self.prometheus_site.process().start()
        except BaseException:
            self.stop()
            raise
        return self

    def load_models(self) -> None:
        """The newest published version of every family in the repository, ensembles pinned to it."""
        from trainer.triton.repository import load_all

        if self.config.families is None:
            load_all(self.triton, self.config.model_repository)
        else:
            load_all(self.triton, self.config.model_repository, self.config.families)

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
        """Stops everything that runs, in reverse order; PostgreSQL last (the writer drains into it first)."""
        for part in (self.prometheus, self.nginx, *reversed(self.gateways), self.writer):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.stop()
        with contextlib.suppress(Exception):
            self.triton.stop()
        with contextlib.suppress(Exception):
            self.postgres.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
