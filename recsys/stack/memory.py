"""Memory of the processes the project starts, read from Linux ``/proc``: a server with its children (Triton and
its python-backend stubs, NGINX's workers, PostgreSQL's backends) and the members of a process group.

``rss`` counts pages shared between processes (libraries, the python backend's shared-memory region) once per
process; ``pss`` splits them, so it is the fairer total; ``anon`` (RssAnon) is private heap, where leaks show.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ProcessMemory",
    "TreeMemory",
    "descendants",
    "group_members",
    "process_memory",
    "settled_tree_memory",
    "tree_memory",
]

PROC = Path("/proc")


def _stat_fields(stat: Path) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after ``pid (comm)``: state, ppid, pgrp, ..."""
    try:
        text = stat.read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def group_members(pgid: int) -> list[int]:
    """Pids of live (not zombie) processes whose process group is ``pgid``."""
    members = []
    for stat in PROC.glob("[0-9]*/stat"):
        fields = _stat_fields(stat)
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def descendants(root: int) -> list[int]:
    """``root`` and every process below it (by parent pid, so children of any thread count)."""
    children: dict[int, list[int]] = {}
    for stat in PROC.glob("[0-9]*/stat"):
        fields = _stat_fields(stat)
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


@dataclass(frozen=True)
class ProcessMemory:
    """One process, KiB; zero when it is gone (or not readable)."""

    rss_kib: int
    anon_kib: int


def process_memory(pid: int) -> ProcessMemory:
    """VmRSS and RssAnon of one process from ``/proc/<pid>/status``."""
    found = {"VmRSS": 0, "RssAnon": 0}
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in found:
                found[key] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return ProcessMemory(rss_kib=found["VmRSS"], anon_kib=found["RssAnon"])


def _status_kib(pid: int, key: str) -> int | None:
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _pss_kib(pid: int) -> int | None:
    try:
        for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _label(pid: int) -> str:
    """The process name; for a python-backend stub, the model instance it serves (``stub recsys_lookup/1``)."""
    try:
        name = (PROC / str(pid) / "comm").read_text().strip()
        argv = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    if name.startswith("triton_python") and len(argv) > 1:  # a stub's argv[1] is <repository>/<model>/<v>/model.py
        model_py = Path(argv[1].decode(errors="replace"))
        return f"stub {model_py.parent.parent.name}/{model_py.parent.name}"
    return name


@dataclass(frozen=True)
class TreeMemory:
    """Resident memory of a process and its descendants (MiB)."""

    pids: tuple[int, ...]
    rss_mib: float
    pss_mib: float | None
    per_process: dict[str, float]  # "pid name" -> RSS MiB


def tree_memory(root: int) -> TreeMemory:
    """RSS and PSS of ``root`` and all its descendants."""
    pids = sorted(descendants(root))
    rss_total, pss_total, pss_ok = 0, 0, True
    per_process: dict[str, float] = {}
    for pid in pids:
        rss = _status_kib(pid, "VmRSS")
        if rss is None:
            continue
        rss_total += rss
        pss = _pss_kib(pid)
        pss_ok = pss_ok and pss is not None
        pss_total += pss or 0
        per_process[f"{pid} {_label(pid)}"] = round(rss / 1024, 1)
    return TreeMemory(
        pids=tuple(pids),
        rss_mib=round(rss_total / 1024, 1),
        pss_mib=round(pss_total / 1024, 1) if pss_ok else None,
        per_process=per_process,
    )


def settled_tree_memory(root: int, *, quiet_s: float = 2.0, timeout_s: float = 20.0) -> TreeMemory:
    """:func:`tree_memory` once the set of processes has not changed for ``quiet_s`` (a model load can leave a
    short-lived helper stub behind for a moment)."""
    deadline = time.monotonic() + timeout_s
    last = tree_memory(root)
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = tree_memory(root)
        if now.pids != last.pids:
            stable_since = time.monotonic()
        last = now
        if time.monotonic() - stable_since >= quiet_s:
            break
    return last
