"""The running stack's state file (``<stack dir>/state.json``): what one ``recsys stack up`` started, written as
each server comes up and removed when the stack stops. ``recsys stack status`` reads it to show what runs and
checks each server's health (:mod:`recsys.stack.status`); ``recsys stack down`` stops exactly those processes
(each pid verified by its start time before it is signalled), also after the supervisor died; ``recsys publish
--load`` reads it to know which repository the stack's Triton serves."""

from __future__ import annotations

import contextlib
import os
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from recsys.stack.pids import ProcessId, alive_members
from recsys.stack.process import ServiceError

__all__ = [
    "STATE_FILE",
    "ServiceRecord",
    "StackState",
    "StackStateError",
    "read_state",
    "remove_state",
    "triton_repository",
    "write_state",
]

STATE_FILE = "state.json"
Phase = Literal["starting", "up"]


class StackStateError(ServiceError):
    """The state file cannot be read, or says a stack runs where a new one was to start."""


class ServiceRecord(BaseModel):
    """One server of the stack: its process (the leader of its own process group), the ports it binds, how its
    health is checked (``http://...`` answers 200, or ``tcp://host:port`` accepts) and the signal that stops it."""

    model_config = ConfigDict(frozen=True)

    name: str
    process: ProcessId
    ports: dict[str, int]
    health: str
    stop_signal: int
    log: str


class StackState(BaseModel):
    model_config = ConfigDict(frozen=True)

    supervisor: ProcessId
    started_at: datetime
    phase: Phase
    workdir: str
    repository: str
    experiment: str
    ports: dict[str, int]
    #: family -> the version the stack loaded at start (a later publish --load changes what Triton serves)
    versions: dict[str, int]
    services: tuple[ServiceRecord, ...]

    def service(self, name: str) -> ServiceRecord | None:
        return next((s for s in self.services if s.name == name), None)

    def running(self) -> list[ServiceRecord]:
        """The services with a live process left (the leader, or members of its group)."""
        return [s for s in self.services if s.process.alive() or alive_members(s.process)]


def write_state(path: Path, state: StackState) -> None:
    """Written whole or not at all (a temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(state.model_dump_json(indent=2) + "\n")
    temporary.replace(path)


def read_state(path: Path) -> StackState | None:
    """The state in ``path``; None if there is no file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StackStateError(f"cannot read the stack's state file {path}: {exc.strerror}") from None
    try:
        return StackState.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "file"
        raise StackStateError(f"the stack's state file {path} is not valid ({where}: {first['msg']})") from None


def remove_state(path: Path, supervisor: ProcessId | None = None) -> None:
    """Removes the file; with ``supervisor``, only if it is still that supervisor's (a newer stack's stays)."""
    if supervisor is not None:
        with contextlib.suppress(StackStateError):
            state = read_state(path)
            if state is not None and state.supervisor != supervisor:
                return
    path.unlink(missing_ok=True)


def triton_repository(path: Path, http: str) -> Path | None:
    """The repository the stack recorded in ``path`` serves, if its Triton (alive) is the one at ``http``
    (``host:port`` of the HTTP endpoint, host on loopback); None when that Triton is not the stack's."""
    state = read_state(path)
    host, _, port = http.rpartition(":")
    if state is None or host.strip("[]") not in ("127.0.0.1", "localhost", "::1", "0.0.0.0", ""):
        return None
    triton = state.service("tritonserver")
    if triton is None or not triton.process.alive() or str(triton.ports.get("http")) != port:
        return None
    return Path(state.repository)
