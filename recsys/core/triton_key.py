"""How a client proves it holds the key of the project's Triton, whose APIs but health are restricted to it
(``--http-restricted-api`` / ``--grpc-restricted-protocol``, see ``recsys.stack.triton.config.RESTRICTED_APIS``).

Standard library only (and serving.contract): the launcher, the control plane and the inference clients all import it.
"""

from __future__ import annotations

# The HTTP header Triton checks; over gRPC the metadata key is this name with Triton's prefix (:func:`key_metadata`).
# Defined in serving.contract: the pod's liveness probe (serving.liveness) sends it too.
from serving.contract import GRPC_PREFIX, KEY_HEADER

__all__ = ["GRPC_PREFIX", "KEY_HEADER", "Metadata", "key_headers", "key_metadata", "perf_analyzer_args"]

Metadata = tuple[tuple[str, str], ...]


def key_metadata(api_key: str | None) -> Metadata:
    """The gRPC metadata that carries ``api_key`` to a restricted Triton (none without a key)."""
    return ((GRPC_PREFIX + KEY_HEADER, api_key),) if api_key else ()


def key_headers(api_key: str | None) -> dict[str, str]:
    """The HTTP headers that carry ``api_key`` (none without a key)."""
    return {KEY_HEADER: api_key} if api_key else {}


def perf_analyzer_args(api_key: str | None) -> tuple[str, ...]:
    """perf_analyzer's arguments that send ``api_key`` over gRPC (``-H``; checked against a keyed Triton 2.51 with
    perf_analyzer 2.51: refused without, measured with)."""
    return ("-H", f"{GRPC_PREFIX}{KEY_HEADER}:{api_key}") if api_key else ()
