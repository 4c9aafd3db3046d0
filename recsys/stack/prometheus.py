"""Prometheus for the local stack: the committed config (grafana/prometheus/) with local targets and intervals,
the Debian package's binary, storage in a folder of its own, bound to 127.0.0.1."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from recsys.monitoring.prometheus import render_config
from recsys.stack.process import ServiceError, ServiceProcess


@dataclass
class LocalPrometheus:
    workdir: Path
    port: int
    targets: dict[str, list[str]] = field(default_factory=dict)  # job -> host:port
    scrape_interval: str = "5s"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def process(self) -> ServiceProcess:
        binary = shutil.which("prometheus")
        if binary is None:
            raise ServiceError("prometheus is not installed (apt-get install prometheus: bootstrap.sh does)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(
            render_config(
                targets=self.targets, scrape_interval=self.scrape_interval, evaluation_interval=self.scrape_interval
            )
        )
        return ServiceProcess(
            name="prometheus",
            command=[
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1d",
            ],
            ready_url=f"{self.url}/-/ready",
            log_path=self.workdir / "prometheus.log",
        )
