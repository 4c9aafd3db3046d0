"""The one logging setup (recsys.core.logs): JSON lines off a terminal, with the request id of the request being
handled; rich on a terminal (issue 15: logs were rich text everywhere, without request ids)."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator

import pytest
from rich.logging import RichHandler

from recsys.core import logs


@pytest.fixture
def root_restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("root_restored")
def test_off_a_terminal_each_record_is_one_json_line_with_the_request_id() -> None:
    stream = io.StringIO()
    logs.configure_logging("INFO", stream)
    log = logging.getLogger("gateway.edge")
    log.info("outside any request")
    token = logs.request_id.set("trace-42")
    try:
        log.warning("inside %s", "one")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        logs.request_id.reset(token)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["outside any request", "inside one", "failed"]
    assert "request_id" not in lines[0]
    assert {line["request_id"] for line in lines[1:]} == {"trace-42"}
    assert lines[1]["level"] == "WARNING"
    assert lines[1]["logger"] == "gateway.edge"
    assert "ValueError: boom" in lines[2]["traceback"]


@pytest.mark.usefixtures("root_restored")
def test_on_a_terminal_records_are_rich() -> None:
    leader, follower = os.openpty()
    with os.fdopen(follower, "w") as terminal:
        logs.configure_logging("INFO", terminal)
        assert isinstance(logging.getLogger().handlers[0], RichHandler)
    os.close(leader)
