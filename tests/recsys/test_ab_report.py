"""The A/B report's CLI glue: the window ``recsys ab-report`` reads, and its output for people and scripts."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import pytest
from tests_support import on_database

from recsys.ab_report import report_window
from recsys.cli import invoke

REPO = Path(__file__).resolve().parents[2]

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


@pytest.fixture
def reported(log_database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """40 listeners per group on the tests' PostgreSQL, each shown 10 lists of which they clicked 3; the window."""
    start = datetime(2026, 3, 1, tzinfo=UTC)

    async def fill(conn: asyncpg.Connection) -> None:
        await conn.execute("TRUNCATE feedback, impressions")
        impressions, feedback = [], []
        for group in ("A", "B"):
            for user in range(40):
                for n in range(10):
                    request, ts = f"{group}-{user}-{n}", start + timedelta(minutes=user + n)
                    impressions.append((request, ts, f"{group}{user}", group, "recsys_a", 1, ["i1", "i2"], 6.5, False))
                    clicked = "i1" if n < 3 else None
                    feedback.append(
                        (f"f-{request}", ts, request, f"{group}{user}", group, clicked, [] if clicked else ["i1"])
                    )
        await conn.executemany(
            "INSERT INTO impressions (request_id, ts, user_id, ab_group, model, model_version, items, latency_ms, "
            "fallback) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
            impressions,
        )
        await conn.executemany(
            "INSERT INTO feedback (event_id, ts, request_id, user_id, ab_group, clicked_item, skipped_items) "
            "VALUES ($1,$2,$3,$4,$5,$6,$7)",
            feedback,
        )

    on_database(log_database, fill)
    monkeypatch.setenv("RECSYS_DATABASE_URL", log_database)
    monkeypatch.setenv("RECSYS_EXPERIMENT_FILE", str(REPO / "gateway" / "experiment.yaml"))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield ["ab-report", "--since", "2026-03-01", "--until", "2026-03-02"]
    root.handlers[:] = handlers  # the CLI configured the root logger, as a process does
    root.setLevel(level)


def test_json_dash_is_one_document_on_stdout(reported: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert invoke([*reported, "--json", "-"]) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)  # the whole of stdout: no table, no message
    assert [g["group"] for g in document["groups"]] == ["A", "B"]
    assert document["groups"][0]["ctr"]["value"] == pytest.approx(0.3)
    assert "feedback left out as flagged" in captured.err
    assert not Path("-").exists()


def test_piped_tables_keep_every_number(reported: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: piped (and at 80 columns) the report's cells were cut to `30.0…`."""
    assert invoke(reported) == 0
    text = capsys.readouterr().out
    assert "…" not in text
    control = next(line for line in text.splitlines() if line.startswith("A (control)"))
    assert "30.00% [" in control
    assert control.split()[-3:] == ["6.5", "6.5", "6.5"]  # latency p50, p95, p99
