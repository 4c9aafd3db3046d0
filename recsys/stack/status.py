"""``recsys stack status``: what the state file says runs, checked now: each process alive (its pid verified by
start time), each server's own health check, and the model versions Triton reports READY."""

from __future__ import annotations

import contextlib
import json
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from recsys.stack.memory import descendants
from recsys.stack.pids import ProcessId
from recsys.stack.state import ServiceRecord, StackState, read_state

__all__ = ["Health", "ServiceStatus", "StackStatus", "check_health", "stack_status"]


class Health(BaseModel):
    model_config = ConfigDict(frozen=True)

    healthy: bool
    detail: str


def check_health(target: str, timeout_s: float = 2.0) -> Health:
    """``http://...``: healthy when it answers 200; ``tcp://host:port``: when it accepts a connection."""
    if target.startswith("tcp://"):
        host, _, port = target.removeprefix("tcp://").rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=timeout_s).close()
        except OSError as exc:
            return Health(healthy=False, detail=str(exc.strerror or exc))
        return Health(healthy=True, detail="accepts connections")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an http_proxy
    try:
        with opener.open(target, timeout=timeout_s) as response:
            return Health(healthy=response.status == 200, detail=f"answers {response.status}")
    except urllib.error.HTTPError as exc:
        with exc:
            body = exc.read(300).decode(errors="replace")
        return Health(healthy=False, detail=f"answers {exc.code} {_short(body)}".strip())
    except (OSError, ValueError) as exc:
        return Health(healthy=False, detail=str(getattr(exc, "reason", exc)))


def _short(body: str) -> str:
    """One line of an error body (JSON bodies compacted)."""
    with contextlib.suppress(ValueError):
        body = json.dumps(json.loads(body), separators=(",", ":"))
    return " ".join(body.split())[:200]


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int
    alive: bool
    #: the server and its descendants alive (workers, backends, stubs)
    processes: int
    ports: dict[str, int]
    #: what the health check asks (``http://...`` must answer 200, ``tcp://...`` must accept)
    check: str
    healthy: bool
    detail: str
    log: str


@dataclass(frozen=True)
class StackStatus:
    state_file: str
    supervisor_pid: int
    supervisor_alive: bool
    started_at: str
    phase: str
    repository: str
    experiment: str
    ports: dict[str, int]
    versions: dict[str, int]
    #: model -> versions Triton reports READY now (None when Triton could not be asked)
    triton_models: dict[str, list[str]] | None
    services: tuple[ServiceStatus, ...]
    #: ensemble -> why the version loaded at start does not serve it (recsys_ann of a version without an index)
    not_served: dict[str, str] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return self.supervisor_alive and self.phase == "up" and all(s.alive and s.healthy for s in self.services)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"healthy": self.healthy}


def _service_status(service: ServiceRecord) -> ServiceStatus:
    alive = service.process.alive()
    health = check_health(service.health) if alive else Health(healthy=False, detail="not running")
    return ServiceStatus(
        name=service.name,
        pid=service.process.pid,
        alive=alive,
        processes=sum(1 for pid in descendants(service.process.pid) if ProcessId.of(pid)) if alive else 0,
        ports=service.ports,
        check=service.health,
        healthy=health.healthy,
        detail=health.detail,
        log=service.log,
    )


def _triton_models(state: StackState) -> dict[str, list[str]] | None:
    """Model -> versions READY, asking Triton's health API (open without its key) about every model and version
    the repository holds (None when Triton is not running)."""
    triton = state.service("tritonserver")
    if triton is None or not triton.process.alive():
        return None
    from recsys.loop.canary import canary_of
    from trainer.triton.family import FAMILIES
    from trainer.triton.repository import published_families, versions

    repository = Path(state.repository)
    families = published_families(repository, (*FAMILIES, *(canary_of(f) for f in FAMILIES if f.name == "factor")))
    asked = [(model, str(version)) for family in families for version in versions(repository, family)
             for model in family.steps]  # fmt: skip
    asked += [(name, "1") for family in families for name in family.ensembles]  # an ensemble has version 1 only
    base = f"http://127.0.0.1:{triton.ports['http']}/v2/models"
    with ThreadPoolExecutor(max_workers=8) as pool:
        ready = pool.map(lambda mv: check_health(f"{base}/{mv[0]}/versions/{mv[1]}/ready").healthy, asked)
        models: dict[str, list[str]] = {}
        for (model, version), ok in zip(asked, list(ready), strict=True):
            if ok:
                models.setdefault(model, []).append(version)
    return {name: sorted(found, key=int) for name, found in sorted(models.items())}


def not_served(repository: Path, loaded: dict[str, int]) -> dict[str, str]:
    """Ensemble -> why the loaded version of its family does not serve it: a factor version published without an
    approximate index has no ``recsys_ann`` (``recsys publish --ann``)."""
    from recsys.loop.canary import canary_of
    from trainer.triton.family import FACTOR, FAMILIES
    from trainer.triton.repository import lacking_ensembles, why_not_served

    return {
        name: why_not_served(family, version)
        for family in (*FAMILIES, canary_of(FACTOR))
        if (version := loaded.get(family.name)) is not None
        for name in lacking_ensembles(repository, family, version)
    }


def stack_status(path: Path) -> StackStatus | None:
    """The stack recorded in ``path``, checked now; None when there is no state file."""
    state = read_state(path)
    if state is None:
        return None
    with ThreadPoolExecutor(max_workers=max(1, len(state.services))) as pool:  # health checks side by side
        services = tuple(pool.map(_service_status, state.services))
    return StackStatus(
        state_file=str(path),
        supervisor_pid=state.supervisor.pid,
        supervisor_alive=state.supervisor.alive(),
        started_at=state.started_at.isoformat(timespec="seconds"),
        phase=state.phase,
        repository=state.repository,
        experiment=state.experiment,
        ports=state.ports,
        versions=state.versions,
        triton_models=_triton_models(state),
        services=services,
        not_served=not_served(Path(state.repository), state.versions),
    )
