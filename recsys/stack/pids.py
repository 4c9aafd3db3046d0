"""Which process a pid is, from Linux ``/proc``: its start time (clock ticks after boot) and command line. A pid
written down earlier (the stack's state file) is signalled only while it still names the same process: pids are
reused, start times are not."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from recsys.stack.memory import group_members

__all__ = ["ProcessId", "alive_members", "kill_group", "signal_verified", "wait_gone"]

PROC = Path("/proc")


def _stat(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` fields after ``pid (comm)``: state, ppid, pgrp, ... (index 19 is the start time)."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _command(pid: int) -> str:
    try:
        argv = (PROC / str(pid) / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return ""
    return " ".join(part.decode(errors="replace") for part in argv)


class ProcessId(BaseModel):
    """A process as it was seen: pid, start time in clock ticks after boot, command line."""

    model_config = ConfigDict(frozen=True)

    pid: int
    start_ticks: int
    command: str

    @classmethod
    def of(cls, pid: int) -> ProcessId | None:
        """The live process ``pid`` now (None if there is none, or it is a zombie)."""
        fields = _stat(pid)
        if fields is None or fields[0] in ("Z", "X"):
            return None
        return cls(pid=pid, start_ticks=int(fields[19]), command=_command(pid))

    def alive(self) -> bool:
        """True while ``pid`` is still this process (same start time) and not a zombie."""
        fields = _stat(self.pid)
        return fields is not None and fields[0] not in ("Z", "X") and int(fields[19]) == self.start_ticks


def alive_members(leader: ProcessId) -> list[int]:
    """Live processes of ``leader``'s process group that started no earlier than it (the group outlives its
    leader: NGINX's workers, a server's children), so a pid reused meanwhile never counts."""
    now = ProcessId.of(leader.pid)
    if now is not None and now.start_ticks != leader.start_ticks:
        return []  # the pid names another process: Linux reuses no pid while a group of that id lives on
    members = []
    for pid in group_members(leader.pid):
        seen = ProcessId.of(pid)
        if seen is not None and seen.start_ticks >= leader.start_ticks:
            members.append(pid)
    return members


def signal_verified(process: ProcessId, signum: int) -> bool:
    """Sends ``signum`` to ``process`` only if its pid still names it; True if sent."""
    if not process.alive():
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signum)
        return True
    return False


def wait_gone(process: ProcessId, timeout_s: float, *, group: bool = False) -> bool:
    """Waits until ``process`` (and with ``group`` its whole group) is gone; True if it went in time."""
    deadline = time.monotonic() + timeout_s
    while process.alive() or (group and alive_members(process)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def kill_group(leader: ProcessId) -> int:
    """SIGKILL to every verified member of ``leader``'s group (the leader included); returns how many."""
    killed = 0
    for pid in alive_members(leader):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed
