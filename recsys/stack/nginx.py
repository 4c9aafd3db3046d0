"""NGINX for the local stack: renders ``nginx/nginx.conf.template`` plus the experiment's ``split_clients`` block
into a prefix folder of its own and runs the Debian package's binary in the foreground (no root paths)."""

from __future__ import annotations

import re
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from string import Template

from gateway.experiment import Experiment
from recsys.stack.process import ServiceError, ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "nginx" / "nginx.conf.template"


def connections_per_address() -> int:
    """The template's ``limit_conn``: requests one client address may have in progress at once (a fixed number in
    the template, not a placeholder, so every deployment of it has the same limit)."""
    found = re.search(r"limit_conn per_address (\d+);", TEMPLATE.read_text())
    if found is None:
        raise ValueError(f"{TEMPLATE} has no limit_conn per_address")
    return int(found[1])


def render_split(experiment: Experiment) -> str:
    """The ``split_clients`` block of an experiment: shares in order, the last group takes the rest (``*``)."""
    lines = [
        f"# Rendered from the experiment {experiment.name!r} (gateway/experiment.yaml); do not edit by hand.",
        'split_clients "${ab_key}" $ab_split {',
    ]
    lines += [f"    {group.share.normalize():f}% {group.name};" for group in experiment.groups[:-1]]
    lines += [f"    * {experiment.groups[-1].name};", "}", ""]
    return "\n".join(lines)


def render_conf(
    *,
    listen: str,
    upstreams: list[str],
    rate_per_s: int = 5000,
    burst: int = 2000,
    workers: int = 1,
    access_log: str = "logs/access.json",
) -> str:
    if not upstreams:
        raise ValueError("NGINX needs at least one gateway upstream")
    servers = "\n".join(f"        server {u} max_fails=1 fail_timeout=2s;" for u in upstreams)
    text = Template(TEMPLATE.read_text()).safe_substitute(
        NGINX_WORKERS=str(workers),
        NGINX_RATE=str(rate_per_s),
        NGINX_BURST=str(burst),
        NGINX_LISTEN=listen,
        NGINX_UPSTREAMS=servers,
        NGINX_ACCESS_LOG=access_log,
    )
    if "${NGINX_" in text:
        raise ValueError(f"{TEMPLATE} has a placeholder render_conf does not fill")
    return text


@dataclass
class LocalNginx:
    prefix: Path
    port: int
    upstreams: list[str]
    experiment: Experiment
    host: str = "127.0.0.1"
    rate_per_s: int = 5000
    burst: int = 2000
    workers: int = 1

    def write_config(self) -> Path:
        for sub in ("conf", "logs", "tmp"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "conf" / "nginx.conf"
        conf.write_text(
            render_conf(
                listen=f"{self.host}:{self.port}",
                upstreams=self.upstreams,
                rate_per_s=self.rate_per_s,
                burst=self.burst,
                workers=self.workers,
            )
        )
        (self.prefix / "conf" / "ab_split.conf").write_text(render_split(self.experiment))
        return conf

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.prefix / "logs" / "access.json"

    def process(self) -> ServiceProcess:
        binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if binary is None:
            raise ServiceError("nginx is not installed (apt-get install nginx; scripts/lib/bootstrap.sh does it)")
        self.write_config()
        return ServiceProcess(
            name="nginx",
            command=[binary, "-p", str(self.prefix.resolve()), "-c", "conf/nginx.conf", "-e", "logs/error.log",
                     "-g", "daemon off;"],
            ready_url=f"{self.url}/nginx-health",
            log_path=self.prefix / "logs" / "stdout.log",
            stop_signal=signal.SIGQUIT,
        )  # fmt: skip
