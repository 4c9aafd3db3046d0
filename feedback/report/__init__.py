"""The A/B report: per-group summaries, comparisons with the control, SRM, and the series over time.

One module per job, all reading the frozen dataclasses of :mod:`~feedback.report.model`:

* :mod:`~feedback.report.model`: buckets, input columns, :class:`ReportInput`, :class:`Report` and its parts;
* :mod:`~feedback.report.clean`: the input DataFrames checked and normalised;
* :mod:`~feedback.report.build`: ``build_report(ReportInput) -> Report``, pure (the statistics are
  :mod:`feedback.stats`; the SQL that fills ``ReportInput`` is :mod:`feedback.queries`);
* :mod:`~feedback.report.document`: ``to_json``;
* :mod:`~feedback.report.plot`: the PNG (matplotlib), imported on its own so this package stays light.

The terminal tables (rich) are the CLI's: :mod:`recsys.ab_report`.

The series is cumulative per time bucket (:data:`BUCKETS`: a minute, an hour or a UTC day), so that a one-minute
demo and a month-long experiment both get a readable curve; ``period`` is always the bucket's start in UTC.
"""

from feedback.report.build import build_report
from feedback.report.document import to_json
from feedback.report.model import (
    BUCKET_WIDTH,
    BUCKETS,
    DEFAULT_PLANNED_USERS,
    LATENCY_COLUMNS,
    METRICS,
    SERIES_COLUMNS,
    Bucket,
    Comparison,
    GroupSummary,
    Interval,
    Report,
    ReportError,
    ReportInput,
    SeriesDifferencePoint,
    SeriesGroupPoint,
    SRMCheck,
    parse_bucket,
)

__all__ = [
    "BUCKETS",
    "BUCKET_WIDTH",
    "DEFAULT_PLANNED_USERS",
    "LATENCY_COLUMNS",
    "METRICS",
    "SERIES_COLUMNS",
    "Bucket",
    "Comparison",
    "GroupSummary",
    "Interval",
    "Report",
    "ReportError",
    "ReportInput",
    "SRMCheck",
    "SeriesDifferencePoint",
    "SeriesGroupPoint",
    "build_report",
    "parse_bucket",
    "to_json",
]
