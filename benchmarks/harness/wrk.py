"""HTTP load with ``wrk`` (the REST paths: gateway, NGINX): one run at one concurrency, read into typed figures."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from recsys.core.errors import RecsysError

__all__ = ["WrkError", "WrkResult", "duration_ms", "parse_wrk", "run_wrk"]

_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


class WrkError(RecsysError):
    """wrk is missing, failed, or printed something this parser cannot read."""


@dataclass(frozen=True)
class WrkResult:
    rps: float
    requests: int
    p50_ms: float
    p99_ms: float
    #: non-2xx/3xx answers plus socket errors (connect, read, write, timeout)
    errors: int


def duration_ms(text: str) -> float:
    """wrk's ``850.00us`` / ``1.25ms`` / ``2.00s`` in milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if match is None:
        raise WrkError(f"cannot read wrk duration {text!r}")
    return float(match[1]) * _UNIT_MS[match[2]]


def parse_wrk(output: str) -> WrkResult:
    """The figures of ``wrk --latency`` output."""
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", output, flags=re.MULTILINE))
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if rate is None or total is None or "50" not in latency or "99" not in latency:
        raise WrkError(f"unexpected wrk output:\n{output}")
    errors = (int(non2xx[1]) if non2xx else 0) + (sum(int(x) for x in sockets.groups()) if sockets else 0)
    return WrkResult(float(rate[1]), int(total[1]), duration_ms(latency["50"]), duration_ms(latency["99"]), errors)


def run_wrk(
    url: str,
    script: Path,
    concurrency: int,
    seconds: float,
    *,
    warmup_s: float = 0.0,
    timeout_s: float | None = None,
) -> WrkResult:
    """``seconds`` of load at ``concurrency`` connections (two threads at most: the load generator shares the
    machine with the servers), after ``warmup_s`` of unrecorded load; ``timeout_s`` is wrk's per-request timeout."""
    binary = shutil.which("wrk")
    if binary is None:
        raise WrkError("wrk is not installed (apt-get install wrk; scripts/lib/bootstrap.sh does it)")
    base = [binary, f"-t{min(2, concurrency)}", f"-c{concurrency}", "--latency"]
    if timeout_s is not None:
        base += ["--timeout", f"{timeout_s:g}s"]
    base += ["-s", str(script)]
    try:
        if warmup_s > 0:  # connections, caches
            subprocess.run([*base, f"-d{int(warmup_s)}s", url], capture_output=True, check=True)
        done = subprocess.run([*base, f"-d{int(seconds)}s", url], capture_output=True, text=True, check=True)
    except subprocess.CalledProcessError as exc:
        raise WrkError(f"wrk failed (exit {exc.returncode}): {str(exc.stderr or exc.stdout)[-500:]}") from exc
    return parse_wrk(done.stdout)
