"""``python -m gateway``: the gateway image's entry point (REST + gRPC in front of Triton), without the CLI.

The image has neither typer, rich nor the trainer's stack, so this reads :mod:`recsys.core.settings` itself and
takes the same overrides as ``recsys serve gateway``; a bad setting or experiment is one line and status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway.main import run
from recsys.core.service import run_service


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
    return run_service(run, {"gateway_port": args.port, "gateway_grpc_port": args.grpc_port, "triton_url": args.triton})


if __name__ == "__main__":
    sys.exit(main())
