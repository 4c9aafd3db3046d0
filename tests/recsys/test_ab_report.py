"""The A/B report's CLI glue: the window ``recsys ab-report`` reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from recsys.ab_report import report_window

NOW = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)


def test_default_window_is_the_30_days_before_now() -> None:
    assert report_window(None, None, NOW) == (NOW - timedelta(days=30), NOW)


def test_naive_times_are_utc_and_aware_ones_keep_their_zone() -> None:
    start, end = report_window(datetime(2026, 3, 1), datetime(2026, 3, 2), NOW)
    assert (start, end) == (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
    cet = timezone(timedelta(hours=1))
    start, end = report_window(datetime(2026, 3, 1, tzinfo=cet), None, NOW)
    assert start.utcoffset() == timedelta(hours=1)
    assert end == NOW


def test_since_defaults_to_30_days_before_until() -> None:
    until = datetime(2026, 2, 1)
    assert report_window(None, until, NOW) == (datetime(2026, 1, 2, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
