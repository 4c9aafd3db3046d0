"""`recsys simulate`'s listeners against the real local stack: every turn is counted (the progress bar moves with
them) and answered; an address where nothing listens is refused at once (issue 15: a 312-line traceback)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from recsys.simulate import simulate
from recsys.stack.process import ServiceError


@pytest.mark.stack
def test_every_listener_turn_is_reported_and_answered(stack: Any, served_world: Any) -> None:
    turns: list[int] = []
    summary = asyncio.run(
        simulate(stack.nginx_url, served_world, listeners=6, requests_per_listener=2, concurrency=3,
                 on_request=lambda: turns.append(1))
    )  # fmt: skip
    assert not summary.errors
    assert len(turns) == summary.requests == 12
    assert sum(summary.impressions.values()) == 12


def test_nothing_listening_is_one_error_at_once(served_world: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"  # bound, never listening: connections are refused
        with pytest.raises(ServiceError, match=f"nothing answers at {url}"):
            asyncio.run(simulate(url, served_world, listeners=400))
