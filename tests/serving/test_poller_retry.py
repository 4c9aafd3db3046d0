"""The live fold-in's poller survives a database URL it cannot use and a database that is away: it says so once,
without the password, backs off, and resumes by itself (issue 15's review: a port that is not a number raised a
ValueError that its loop did not catch, and the thread died for the life of the served version)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest

from serving.poller import FeedbackPoller

BAD_PORT_URL = "postgresql://recsys:FAKEPW@127.0.0.1:notaport/db"


def _until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_a_bad_url_is_logged_once_and_retried_until_it_works(
    log_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="serving.poller")
    poller = FeedbackPoller(BAD_PORT_URL, {}, lambda plays: None, retry_s=0.01)
    poller.start()
    try:
        _until(lambda: poller.failures >= 5)
        assert poller.is_alive()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "ValueError" in warnings[0].getMessage()
        assert "FAKEPW" not in caplog.text
        poller.dsn = log_database  # the outage ends (a URL that works): no restart needed
        _until(lambda: poller.polls > 0)
        _until(lambda: "readable again" in caplog.text)
        assert poller.failures == 0
    finally:
        poller.stop()
    assert not poller.is_alive()
