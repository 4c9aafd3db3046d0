"""What the A/B report reads from PostgreSQL: per (period, group, user) counts and per-impression latencies.

The period is the impression's time truncated in UTC to the report's bucket (minute, hour or day); the bucket is
a bound parameter of ``date_trunc``, checked against :data:`feedback.report.BUCKETS` before any query runs.

Only clean feedback counts (``feedback_checked.clean``, the one definition, which the live fold-in uses too): an
event flagged by ``feedback_checked`` (no matching impression, a click on an item that was not shown, or a
user/group that disagrees with the impression) is left out and counted in :class:`Flagged`, which the report prints
beside the figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from feedback.report.model import LATENCY_COLUMNS, SERIES_COLUMNS, Bucket, ReportInput, parse_bucket
from recsys.core.dsn import connect

SERIES_SQL = """
SELECT date_trunc($3::text, i.ts AT TIME ZONE 'UTC') AS period, i.ab_group AS "group", i.user_id,
       count(*) AS impressions,
       count(*) FILTER (WHERE f.clicked) AS clicks,
       count(*) FILTER (WHERE f.skipped) AS skips
FROM impressions i
LEFT JOIN (
    SELECT request_id, bool_or(clicked_item IS NOT NULL) AS clicked, bool_or(cardinality(skipped_items) > 0) AS skipped
    FROM feedback_checked
    WHERE clean
    GROUP BY request_id
) f ON f.request_id = i.request_id
WHERE i.ts >= $1 AND i.ts < $2
GROUP BY 1, 2, 3
"""
LATENCY_SQL = 'SELECT ab_group AS "group", latency_ms FROM impressions WHERE ts >= $1 AND ts < $2'
FLAGGED_SQL = """
SELECT count(*) FILTER (WHERE orphan) AS orphan,
       count(*) FILTER (WHERE click_not_shown) AS click_not_shown,
       count(*) FILTER (WHERE mismatch) AS mismatch
FROM feedback_checked WHERE ts >= $1 AND ts < $2
"""


@dataclass(frozen=True)
class Flagged:
    orphan: int
    click_not_shown: int
    mismatch: int


async def load_report_input(
    dsn: str, since: datetime, until: datetime, *, bucket: Bucket = "day"
) -> tuple[ReportInput, Flagged]:
    """The window [since, until) bucketed by ``bucket``; raises :class:`feedback.report.ReportError` on a bad one."""
    bucket = parse_bucket(bucket)
    conn = await connect(dsn, timeout=10)  # a bad URL or an outage: one-line ConfigError / DataError
    try:
        series = await conn.fetch(SERIES_SQL, since, until, bucket)
        latency = await conn.fetch(LATENCY_SQL, since, until)
        flagged = await conn.fetchrow(FLAGGED_SQL, since, until)
    finally:
        await conn.close()
    return (
        ReportInput(
            series=pd.DataFrame([tuple(r) for r in series], columns=list(SERIES_COLUMNS)),
            latency=pd.DataFrame([tuple(r) for r in latency], columns=list(LATENCY_COLUMNS)),
            bucket=bucket,
        ),
        Flagged(**dict(flagged)) if flagged is not None else Flagged(0, 0, 0),
    )
