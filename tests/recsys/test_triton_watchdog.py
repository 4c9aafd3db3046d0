"""The watchdog's reading of Triton's errors (the live behaviour is tested against the whole stack in
tests/stack/test_faults.py: a killed stub reloaded under load)."""

from __future__ import annotations

import pytest

from recsys.stack.triton.watchdog import dead_stub_model


@pytest.mark.parametrize(
    ("message", "model"),
    [
        # what Triton 2.51 answered through an ensemble after the lookup's stub was SIGKILLed
        ("INTERNAL: in ensemble 'recsys_a', Stub process 'recsys_lookup_0_0' is not healthy.", "recsys_lookup"),
        ("INTERNAL: Stub process 'recsys_scorer_onnx_0_1' is not healthy.", "recsys_scorer_onnx"),
        ("INTERNAL: in ensemble 'recsys_a_canary', Stub process 'recsys_topk_canary_2_0' is not healthy.",
         "recsys_topk_canary"),
        ("NOT_FOUND: Request for unknown model: 'recsys_a' is not found", None),
        ("UNAVAILABLE: failed to connect to all addresses", None),
    ],
)  # fmt: skip
def test_the_dead_stubs_model_is_read_from_tritons_error(message: str, model: str | None) -> None:
    assert dead_stub_model(message) == model
