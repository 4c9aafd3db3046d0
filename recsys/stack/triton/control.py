"""The control plane of a running Triton over plain HTTP (``urllib``): health, load, unload, readiness, repository
index and metrics. Five small JSON calls need no client library, the launcher then works without gevent in the
calling process, and Triton's own ``{"error": ...}`` text reaches our exceptions verbatim."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from recsys.core.triton_key import KEY_HEADER
from recsys.stack.triton.config import TritonServerError, TritonUrls

__all__ = ["RESTART_PARAMETER", "TritonControl"]

#: the config parameter :meth:`TritonControl.restart_model` changes to make Triton load a model again
RESTART_PARAMETER = "recsys_restart"


class TritonControl:
    """The control plane of any running server (ours or one started elsewhere), by its URLs; ``api_key`` (the
    server's restricted-API key) goes with every call."""

    def __init__(self, urls: TritonUrls, *, timeout_s: float = 120.0, api_key: str | None = None) -> None:
        self.urls = urls
        self.timeout_s = timeout_s
        self._api_key = api_key or None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an http_proxy

    @classmethod
    def at(cls, http: str, metrics: str = "", *, timeout_s: float = 120.0, api_key: str | None = None) -> TritonControl:
        """A control for ``host:port`` of a server's HTTP endpoint."""
        return cls(TritonUrls(http=http, grpc="", metrics=metrics), timeout_s=timeout_s, api_key=api_key)

    def load_model(self, name: str, config: str | None = None) -> None:
        """Load (or reload) ``name`` from the repository; returns when it is ready (explicit mode only).

        ``config`` (model config as JSON) overrides the model's config.pbtxt for this load, which is how an
        ensemble is switched to new pinned step versions in one step.
        """
        payload = b"{}" if config is None else json.dumps({"parameters": {"config": config}}).encode()
        status, body = self._request("POST", f"/v2/repository/models/{_quote(name)}/load", payload)
        if status != 200:
            raise TritonServerError(f"Triton could not load model {name!r}: {_error_text(body)}")

    def model_config(self, name: str) -> dict[str, Any]:
        """The config ``name`` is served with now (an override included), as Triton gives it."""
        status, body = self._request("GET", f"/v2/models/{_quote(name)}/config")
        if status != 200:
            raise TritonServerError(f"Triton has no config of model {name!r}: {_error_text(body)}")
        config = json.loads(body)
        assert isinstance(config, dict)
        return config

    def restart_model(self, name: str) -> None:
        """Loads ``name`` again with the config it is served with, in new instances (new python stubs).

        Triton skips a load whose config is unchanged (measured on 2.51: 1 ms, the dead stub kept), so the config
        gets a parameter that changes on every call; pins and version policies stay as they are."""
        config = self.model_config(name)
        config.setdefault("parameters", {})[RESTART_PARAMETER] = {"string_value": str(time.time_ns())}
        self.load_model(name, json.dumps(config))

    def unload_model(self, name: str, *, wait: bool = True) -> None:
        """Unload ``name`` (explicit mode only). Triton unloads in the background; ``wait`` polls until it is gone."""
        status, body = self._request("POST", f"/v2/repository/models/{_quote(name)}/unload", b"{}")
        if status != 200:
            raise TritonServerError(f"Triton could not unload model {name!r}: {_error_text(body)}")
        deadline = time.monotonic() + self.timeout_s
        while wait and self.is_model_ready(name):
            if time.monotonic() > deadline:
                raise TritonServerError(f"model {name!r} still ready {self.timeout_s:g} s after unload")
            time.sleep(0.05)

    def is_model_ready(self, name: str, version: str = "") -> bool:
        path = f"/v2/models/{_quote(name)}" + (f"/versions/{_quote(version)}" if version else "") + "/ready"
        status, _ = self._request("GET", path)
        return status == 200

    def is_server_ready(self) -> bool:
        try:
            status, _ = self._request("GET", "/v2/health/ready")
        except TritonServerError:
            return False
        return status == 200

    def repository_index(self) -> list[dict[str, Any]]:
        """Every model of the repository with its ``state`` and, after a failed load, the ``reason``."""
        status, body = self._request("POST", "/v2/repository/index", b"{}")
        if status != 200:
            raise TritonServerError(f"Triton repository index failed: {_error_text(body)}")
        index = json.loads(body)
        assert isinstance(index, list)
        return index

    def metrics(self) -> str:
        """The Prometheus text of the metrics endpoint."""
        try:
            with self._opener.open(self.urls.metrics, timeout=10) as response:
                text: str = response.read().decode()
                return text
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise TritonServerError(f"cannot read Triton metrics at {self.urls.metrics}: {exc}") from exc

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(f"http://{self.urls.http}{path}", data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        if self._api_key:
            request.add_header(KEY_HEADER, self._api_key)
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()
        except (OSError, http.client.HTTPException) as exc:
            raise TritonServerError(f"Triton at {self.urls.http} did not answer {method} {path}: {exc}") from exc


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _error_text(body: bytes) -> str:
    try:
        payload = json.loads(body)
    except ValueError:
        return body.decode("utf-8", errors="replace").strip() or "(no message)"
    if isinstance(payload, dict) and "error" in payload:
        return str(payload["error"])
    return json.dumps(payload)
