"""Is a python stub of a served ensemble dead? The liveness probe of a Triton pod: ``python3 -m serving.liveness``.

Triton 2.51 keeps a model whose python stub was killed (SIGKILL, the OOM killer) READY, its health API says live,
and every request through it fails with ``Stub process '<instance>' is not healthy`` for good. The local stack's
watchdog (``recsys.stack.triton.watchdog``) loads such a model again; in a pod this probe fails instead, so the
kubelet restarts the container, which loads the newest versions again. Only that error fails it: overload, a
timeout or a model being loaded never do (killing a busy server makes things worse).

Standard library only: it runs inside the Triton image, beside the stubs, with the key from RECSYS_TRITON_API_KEY.
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.error
import urllib.request

from serving.contract import KEY_HEADER, TOP_K, USER_ID

__all__ = ["PROBE_USER", "STUB_DEAD", "dead_stub_model", "dead_stubs", "main"]

#: Triton's error when a python stub of a model instance is gone
STUB_DEAD = re.compile(r"Stub process '(?P<instance>[^']+)' is not healthy")
#: the listener probes ask for: nobody (the popularity fallback), so probes never touch a real listener's state
PROBE_USER = "recsys-watchdog-probe"


def dead_stub_model(message: str) -> str | None:
    """The model whose stub died, from Triton's error text (instance ``<model>_<group>_<n>``), else None."""
    found = STUB_DEAD.search(message)
    if found is None:
        return None
    model, *_ = found["instance"].rsplit("_", 2)
    return model


def _call(url: str, key: str | None, timeout_s: float, body: dict[str, object] | None = None) -> tuple[int, str]:
    headers = {"content-type": "application/json"} | ({KEY_HEADER: key} if key else {})
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def dead_stubs(http: str, key: str | None, timeout_s: float = 5.0) -> list[str]:
    """The models behind READY ensembles at ``http`` (host:port) whose python stub is dead. A failure to ask (a
    timeout, a refused connection) raises OSError: the caller decides what that means."""
    base = f"http://{http}/v2"
    status, text = _call(f"{base}/repository/index", key, timeout_s, body={})
    if status != 200:
        raise OSError(f"the repository index answered {status}: {text[:200]}")
    ready = [str(entry["name"]) for entry in json.loads(text) if entry.get("state") == "READY"]
    dead: set[str] = set()
    for name in ready:
        status, text = _call(f"{base}/models/{name}/config", key, timeout_s)
        if status != 200 or json.loads(text).get("platform") != "ensemble":
            continue
        inputs = [
            {"name": USER_ID, "shape": [1, 1], "datatype": "BYTES", "data": [PROBE_USER]},
            {"name": TOP_K, "shape": [1, 1], "datatype": "INT64", "data": [1]},
        ]
        status, text = _call(f"{base}/models/{name}/infer", key, timeout_s, body={"inputs": inputs})
        if status != 200 and (model := dead_stub_model(text)) is not None:
            dead.add(model)
    return sorted(dead)


def main() -> int:
    """Exit 1 (and say which) only when a stub is dead; 0 otherwise, a Triton that does not answer included (the
    HTTP liveness of its health API is the probe for that)."""
    port = os.environ.get("RECSYS_TRITON_HTTP_PORT", "8000")
    try:
        dead = dead_stubs(f"127.0.0.1:{port}", os.environ.get("RECSYS_TRITON_API_KEY") or None, timeout_s=3.0)
    except (OSError, ValueError) as exc:
        print(f"liveness: not checked ({exc})", file=sys.stderr)
        return 0
    for model in dead:
        print(f"liveness: the python stub of {model} is dead", file=sys.stderr)
    return 1 if dead else 0


if __name__ == "__main__":
    raise SystemExit(main())
