"""``recsys stack down``: stop exactly the processes a stack's state file names, from another process.

A live supervisor is asked to stop (SIGTERM: it stops its servers in order, PostgreSQL last, and removes the
file); whatever is still there afterwards (the supervisor died, or did not finish in time) is stopped here, each
server with its own stop signal, its process group SIGKILLed after a timeout. Every pid is verified by its start
time before it is signalled, so a pid the kernel reused for another process is never touched.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from recsys.stack.pids import alive_members, kill_group, signal_verified, wait_gone
from recsys.stack.state import ServiceRecord, StackState, read_state, remove_state

__all__ = ["StopReport", "stop_stack"]

#: how long the supervisor gets to stop its stack (Triton alone may take 30 s)
SUPERVISOR_TIMEOUT_S = 90.0
#: how long a server gets after its stop signal before its group is killed
SERVICE_TIMEOUT_S = 30.0
#: how long children get after their leader exited
GROUP_GRACE_S = 5.0


@dataclass
class StopReport:
    state: StackState
    supervisor_was_alive: bool
    supervisor_stopped_it: bool = False
    #: "name (pid N)" of the servers that were running when ``down`` began
    were_running: list[str] = field(default_factory=list)
    #: servers that needed SIGKILL
    killed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        supervisor = f"supervisor pid {self.state.supervisor.pid}"
        if not self.were_running and not self.supervisor_was_alive:
            return f"the stack of {supervisor} had already stopped; its state file is removed"
        running = ", ".join(self.were_running) or "no server"
        if self.supervisor_stopped_it:
            how = f"{supervisor} stopped it"
        elif self.supervisor_was_alive:
            how = f"{supervisor} did not finish in time: stopped here"
        else:
            how = f"{supervisor} had died: stopped here"
        killed = f"; SIGKILL needed for {', '.join(self.killed)}" if self.killed else ""
        return f"stack stopped in {self.seconds:.1f} s ({how}): {running}{killed}"


def _label(service: ServiceRecord) -> str:
    return f"{service.name} (pid {service.process.pid})"


def _stop_service(service: ServiceRecord, timeout_s: float) -> bool:
    """Stops one server and its group; True if SIGKILL was needed."""
    process = service.process
    if signal_verified(process, service.stop_signal) and wait_gone(process, timeout_s):
        if wait_gone(process, GROUP_GRACE_S, group=True):
            return False
    elif not alive_members(process):
        return False
    kill_group(process)
    wait_gone(process, 5.0, group=True)
    return True


def stop_stack(
    path: Path, *, supervisor_timeout_s: float = SUPERVISOR_TIMEOUT_S, service_timeout_s: float = SERVICE_TIMEOUT_S
) -> StopReport | None:
    """Stops the stack recorded in ``path`` and removes the file; None when there is no state file."""
    state = read_state(path)
    if state is None:
        return None
    began = time.monotonic()
    report = StopReport(state, supervisor_was_alive=state.supervisor.alive())
    report.were_running = [_label(s) for s in state.running()]
    if report.supervisor_was_alive and signal_verified(state.supervisor, signal.SIGTERM):
        report.supervisor_stopped_it = wait_gone(state.supervisor, supervisor_timeout_s) and not state.running()
    for service in reversed(state.services):  # started in dependency order: stopped the other way round
        if _stop_service(service, service_timeout_s):
            report.killed.append(_label(service))
    remove_state(path, state.supervisor)
    report.seconds = time.monotonic() - began
    return report
