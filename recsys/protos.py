"""Generates the Python code of ``protos/`` (grpcio-tools) into ``recsys/v1/``; ``python -m recsys.protos``.

The proto package ``recsys.v1`` maps onto the import path ``recsys.v1``, so generated imports resolve inside this
package without path tricks. The generated files are committed; ``tests/gateway/test_protos.py`` regenerates into a
temporary folder and fails when they differ (edit the .proto, rerun this, commit both).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
PROTO_FILES = ("recsys/v1/recsys.proto",)


def generate(out_dir: Path = ROOT) -> list[Path]:
    """Runs protoc (Python, .pyi stubs, gRPC stubs) into ``out_dir``; returns the files written."""
    from grpc_tools import protoc  # build-time tool: imported only here

    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{PROTO_DIR}"] + [f"--{kind}_out={out_dir}" for kind in ("python", "pyi", "grpc_python")]
    if protoc.main([*args, *(str(PROTO_DIR / name) for name in PROTO_FILES)]) != 0:
        raise RuntimeError("protoc failed (see its message above)")
    written = []
    for name in PROTO_FILES:
        stem = out_dir / name.removesuffix(".proto")
        written += [stem.with_name(stem.name + suffix) for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")]
    return written


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(ROOT))
    sys.exit(0)
