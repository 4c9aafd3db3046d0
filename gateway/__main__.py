"""``python -m gateway``: the gateway image's entry point (REST + gRPC in front of Triton), without the CLI.

The image has neither typer, rich nor the trainer's stack, so this reads :mod:`recsys.core.settings` itself and
takes the same overrides as ``recsys serve gateway``; a bad setting or experiment is one line and status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from gateway.main import run
from recsys.core.errors import RecsysError
from recsys.core.settings import get_settings


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gateway",
        description="Start the gateway (REST + gRPC) in front of a running Triton; SIGTERM or Ctrl-C stops it. "
        "Settings come from RECSYS_* environment variables; these options override them.",
    )
    p.add_argument("--port", type=int, help="REST port [RECSYS_GATEWAY_PORT, 8080]")
    p.add_argument("--grpc-port", type=int, help="gRPC port [RECSYS_GATEWAY_GRPC_PORT, 50051]")
    p.add_argument("--triton", help="Triton gRPC host:port [RECSYS_TRITON_URL, 127.0.0.1:8001]")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = get_settings()
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        updates: dict[str, Any] = {"gateway_port": args.port, "gateway_grpc_port": args.grpc_port}
        updates["triton_url"] = args.triton
        run(settings.model_copy(update={k: v for k, v in updates.items() if v is not None}))
    except RecsysError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
