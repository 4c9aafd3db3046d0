"""The generated code in ``recsys/v1/`` is what ``python -m recsys.protos`` makes of ``protos/`` today."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.protos import ROOT, generate


def test_committed_generated_code_is_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev dependency) generates the code")
    written = generate(tmp_path)
    assert written
    for path in written:
        committed = ROOT / path.relative_to(tmp_path)
        assert committed.is_file(), f"{committed.relative_to(ROOT)} is missing: run `python -m recsys.protos`"
        assert committed.read_text() == path.read_text(), (
            f"{committed.relative_to(ROOT)} is stale: run `python -m recsys.protos` and commit the result"
        )


def test_feedback_latency_has_presence() -> None:
    """0.0 ms is a latency, not "unknown": the field must tell unset from zero (see test_transports_agree)."""
    from recsys.v1 import recsys_pb2

    assert recsys_pb2.FeedbackRequest(inference_time_ms=0.0).HasField("inference_time_ms")
    assert not recsys_pb2.FeedbackRequest().HasField("inference_time_ms")
