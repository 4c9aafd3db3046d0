"""What listeners did, read back from the feedback log: the data of warm retraining.

Two sources hold the same log: PostgreSQL (the tables of ``feedback/migrations``) while it is small, and the
day-partitioned Parquet export (``feedback/log_export.py``) once it outgrows the database::

    DIR/plays/day=YYYY-MM-DD/part-*.parquet        event_id, ts, user_id, item_id, ms_played, received, seq
    DIR/feedback/day=YYYY-MM-DD/part-*.parquet     event_id, ts, request_id, user_id, ..., skipped_items, seq, clean
    DIR/impressions/day=YYYY-MM-DD/part-*.parquet  (not read here: what was shown says nothing by itself)

Both are read into the same raw rows (:class:`LogRows`), and one pure function (:func:`build`) turns those into
:class:`Interactions`, so the two sources cannot drift apart. The rules:

* a play is a positive of weight 1, and so is a click on a recommendation (the listener chose to hear it);
* clicks and skips count only when clean (the view ``feedback_checked``: the list was served to that listener and
  showed the clicked item), the same rule as the A/B report and the live fold-in, so forged feedback trains nothing;
* skips are kept apart as :class:`Skips`, by external id: the positives stay positives, and evaluation can ask
  how often a model still ranks what listeners skipped (:func:`skip_metrics`);
* ``decay_days`` (a half-life) weighs each event by ``0.5 ** (age / half_life)``, age counted back from the
  window's end, so a retrain follows tastes that move;
* ``base`` merges a published run's history (its ``ids.npz``/``history.npz``) in, as if those pairs had been
  played at the cut-off ``since``: the log since the cut-off is what is new, the base run holds the rest.

The layout's names are repeated in ``feedback/log_export.py`` on purpose: the trainer must not import the
feedback package (the layer contract); the export-then-load test keeps the two in step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from recsys.core.dsn import connect, redact
from recsys.core.errors import ConfigError, DataError
from trainer.artifacts import Run, load_run
from trainer.data.interactions import Events, FloatArray, IdMap, IndexArray, IntArray, Interactions, from_frame
from trainer.models.base import Recommender

logger = logging.getLogger(__name__)

__all__ = [
    "LogData",
    "LogRows",
    "LogWindow",
    "Skips",
    "build",
    "decay_weights",
    "is_log_folder",
    "is_postgres_url",
    "load_log",
    "read_parquet",
    "read_postgres",
    "skip_metrics",
]

PLAYS, FEEDBACK = "plays", "feedback"
DAY_PREFIX = "day="
SECONDS_PER_DAY = 86_400
_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_INTEGER_ID = r"-?(?:0|[1-9][0-9]{0,17})"  # canonical decimal integers that fit in int64
_DAY_DIR = re.compile(r"^day=(\d{4}-\d{2}-\d{2})$")

StrArray = npt.NDArray[np.str_]
Columns = tuple[Any, Any, Any]  # user, item, time columns of one query or table (arrow arrays or empty lists)


@dataclass(frozen=True)
class LogWindow:
    """The half-open time window ``[since, until)`` of the log to read; ``None`` leaves that side open."""

    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        for name, value in (("since", self.since), ("until", self.until)):
            if value is not None and value.tzinfo is None:
                raise ConfigError(f"log window: {name} {value.isoformat()} has no time zone (give UTC)")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ConfigError(
                f"log window: since {self.since.isoformat()} is not before until {self.until.isoformat()}"
            )

    @property
    def since_s(self) -> int | None:
        return None if self.since is None else int(self.since.timestamp())

    @property
    def until_s(self) -> int | None:
        return None if self.until is None else int(self.until.timestamp())

    def describe(self) -> str:
        since = "the start" if self.since is None else self.since.isoformat()
        until = "now" if self.until is None else self.until.isoformat()
        return f"from {since} until {until}"


@dataclass(frozen=True)
class LogRows:
    """The raw rows either source yields: external ids as strings, times as epoch seconds.

    ``positive_*`` are plays and clicks (``n_clicks`` of them are clicks), ``skip_*`` every skipped item.
    """

    positive_users: StrArray
    positive_items: StrArray
    positive_times: IntArray
    skip_users: StrArray
    skip_items: StrArray
    skip_times: IntArray
    n_clicks: int = 0

    @classmethod
    def empty(cls) -> LogRows:
        none = np.array([], dtype=str)
        return cls(none, none, np.array([], dtype=np.int64), none, none, np.array([], dtype=np.int64))

    def __post_init__(self) -> None:
        if not (len(self.positive_users) == len(self.positive_items) == len(self.positive_times)):
            raise DataError("log: play columns have different lengths")
        if not (len(self.skip_users) == len(self.skip_items) == len(self.skip_times)):
            raise DataError("log: skip columns have different lengths")


@dataclass(frozen=True)
class Skips:
    """Skipped (user, item) pairs by external id, with when; indices come from whichever id maps apply."""

    user_ids: npt.NDArray[np.generic]
    item_ids: npt.NDArray[np.generic]
    timestamps: IntArray

    def __len__(self) -> int:
        return len(self.user_ids)

    def indices(self, user_ids: IdMap, item_ids: IdMap) -> tuple[IndexArray, IndexArray]:
        """The distinct skipped pairs as indices of these id maps; pairs with an unknown user or item are left out.

        Splits compact the id maps, so the skips stay in external ids until the evaluation knows its maps.
        """
        users = user_ids.indices(self.user_ids)
        items = item_ids.indices(self.item_ids)
        known = (users >= 0) & (items >= 0)
        n = max(len(item_ids), 1)
        keys = np.unique(users[known].astype(np.int64) * n + items[known])
        return (keys // n).astype(np.int32), (keys % n).astype(np.int32)


@dataclass(frozen=True)
class LogData:
    """The log turned into training data, with its skips and what went into it (for the run's metrics)."""

    interactions: Interactions
    skips: Skips
    summary: dict[str, Any]


def is_postgres_url(spec: str) -> bool:
    return spec.startswith(_POSTGRES_SCHEMES)


def is_log_folder(path: Path) -> bool:
    """Whether ``path`` is the export's layout: a ``plays/`` or ``feedback/`` folder of ``day=`` partitions."""
    for table in (PLAYS, FEEDBACK):
        folder = path / table
        if folder.is_dir() and any(_DAY_DIR.match(p.name) for p in folder.iterdir() if p.is_dir()):
            return True
    return False


def load_log(
    spec: str | Path,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    decay_days: float | None = None,
    base: Path | Run | None = None,
) -> LogData:
    """Reads the log ``[since, until)`` from a PostgreSQL URL or an export folder and builds the training data."""
    window = LogWindow(since, until)
    text = str(spec)
    if is_postgres_url(text):
        rows = read_postgres(text, window)
        source = redact(text)
    else:
        folder = Path(spec)
        if not folder.is_dir():
            raise DataError(f"{spec}: no such folder (expected an export of the feedback log)")
        if not is_log_folder(folder):
            raise DataError(f"{spec}: not a feedback log export (no plays/ or feedback/ day=YYYY-MM-DD folders)")
        rows = read_parquet(folder, window)
        source = str(folder)
    base_run = load_run(base) if isinstance(base, Path) else base
    return build(rows, window=window, decay_days=decay_days, base=base_run, source=source)


# --- the pure part: rows -> interactions ----------------------------------------------------------------------


def decay_weights(times: IntArray, reference: int, half_life_days: float) -> FloatArray:
    """``0.5 ** (age / half_life)`` per event, age in days before ``reference`` (events after it weigh 1).

    Exponential decay keeps a listener's old favourites in the model while letting this week's plays lead;
    one half-life is the one knob, and it reads as "a play this many days old counts half".
    """
    if not half_life_days > 0:
        raise ConfigError(f"decay half-life must be > 0 days, got {half_life_days}")
    age_days = np.maximum(reference - np.asarray(times, dtype=np.int64), 0) / SECONDS_PER_DAY
    weights: FloatArray = np.power(0.5, age_days / half_life_days).astype(np.float32)
    return weights


def build(
    rows: LogRows,
    *,
    window: LogWindow | None = None,
    decay_days: float | None = None,
    base: Run | None = None,
    source: str = "log",
) -> LogData:
    """Turns raw log rows (and optionally a base run's history) into :class:`Interactions` and :class:`Skips`.

    Ids that are all canonical integers become integers (as the table loaders read them, and as a base run
    trained on integer ids stores them); otherwise every id is a string. Events (for temporal splits and
    session models) are the log's plays only: a base run's pairs have no play times of their own.
    """
    window = window or LogWindow()
    n_log = len(rows.positive_users)
    if n_log == 0 and base is None:
        raise DataError(f"{source}: no plays or clicks {window.describe()}")
    times = rows.positive_times
    if len(times):
        reference = window.until_s if window.until_s is not None else int(times.max())
        cut_off = window.since_s if window.since_s is not None else int(times.min())
    else:
        now = int(datetime.now(UTC).timestamp())
        reference = window.until_s if window.until_s is not None else now
        cut_off = window.since_s if window.since_s is not None else reference

    weights = np.ones(n_log, dtype=np.float32)
    if decay_days is not None:
        weights = decay_weights(times, reference, decay_days)

    users: npt.NDArray[Any] = rows.positive_users
    items: npt.NDArray[Any] = rows.positive_items
    all_times = times
    n_base = 0
    if base is not None:
        base_users, base_items, base_weights = _base_pairs(base)
        n_base = len(base_users)
        if decay_days is not None:
            base_weights = base_weights * decay_weights(np.array([cut_off]), reference, decay_days)[0]
        users = _unify_ids(users, base_users)
        items = _unify_ids(items, base_items)
        weights = np.concatenate([weights, base_weights.astype(np.float32)])
        all_times = np.concatenate([times, np.full(n_base, cut_off, dtype=np.int64)])
    else:
        users = _unify_ids(users)
        items = _unify_ids(items)

    frame = pd.DataFrame({"user": users, "item": items, "weight": weights, "time": all_times})
    interactions, _ = from_frame(frame, time_col="time", source=source)
    interactions = dataclasses.replace(
        interactions,
        user_ids=_typed(interactions.user_ids),
        item_ids=_typed(interactions.item_ids),
        events=_events(interactions, users[:n_log], items[:n_log], times) if n_log else None,
    )
    skip_users = rows.skip_users
    skip_items = rows.skip_items
    skips = Skips(
        user_ids=_like(skip_users, interactions.user_ids),
        item_ids=_like(skip_items, interactions.item_ids),
        timestamps=rows.skip_times,
    )
    summary: dict[str, Any] = {
        "source": source,
        "since": None if window.since is None else window.since.isoformat(),
        "until": None if window.until is None else window.until.isoformat(),
        "plays": n_log - rows.n_clicks,
        "clicks": rows.n_clicks,
        "skips": len(skips),
        "base_pairs": n_base,
        "decay_days": decay_days,
    }
    logger.info(
        "%s: %d plays, %d clicks, %d skips %s%s",
        source,
        n_log - rows.n_clicks,
        rows.n_clicks,
        len(skips),
        window.describe(),
        f", merged with {n_base} pairs of the base run" if base is not None else "",
    )
    return LogData(interactions=interactions, skips=skips, summary=summary)


def _base_pairs(run: Run) -> tuple[npt.NDArray[Any], npt.NDArray[Any], FloatArray]:
    """Every (user, item, weight) the base run knew (its history: train and test pairs), by external id."""
    history = run.history.tocoo()
    users: npt.NDArray[Any] = run.user_ids.ids[history.row]
    items: npt.NDArray[Any] = run.item_ids.ids[history.col]
    return users, items, np.asarray(history.data, dtype=np.float32)


def _unify_ids(*parts: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The id columns of ``parts`` concatenated: all integers when every id is one, strings otherwise."""
    as_ints = [_integers(p) for p in parts]
    if all(p is not None for p in as_ints):
        return np.concatenate([p for p in as_ints if p is not None]) if parts else np.array([], dtype=np.int64)
    return np.concatenate([np.asarray(p).astype(str) for p in parts])


def _integers(values: npt.NDArray[Any]) -> npt.NDArray[np.int64] | None:
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.int64)
    text = pd.Series(np.asarray(values).astype(str), dtype=object)
    if len(text) and not bool(text.str.fullmatch(_INTEGER_ID).all()):
        return None
    return text.astype(np.int64).to_numpy()


def _typed(ids: IdMap) -> IdMap:
    """String ids as a unicode array (pandas hands back objects): sortable, searchable, saved without pickle."""
    return ids if ids.is_integer else IdMap(ids.ids.astype(str))


def _like(values: StrArray, ids: IdMap) -> npt.NDArray[Any]:
    """Skip ids in the type of the id map (integers stay integers when they can), for :meth:`Skips.indices`."""
    if ids.is_integer:
        found = _integers(values)
        if found is not None:
            return found
    return np.asarray(values).astype(str)


def _events(interactions: Interactions, users: npt.NDArray[Any], items: npt.NDArray[Any], times: IntArray) -> Events:
    """The log's plays in (user, time) order, as indices of the interactions' (sorted) id maps."""
    u = np.searchsorted(interactions.user_ids.ids, users).astype(np.int32)
    i = np.searchsorted(interactions.item_ids.ids, items).astype(np.int32)
    order = np.lexsort((times, u))
    return Events(u[order], i[order], times[order])


# --- evaluation with the skips -----------------------------------------------------------------------------------


def skip_metrics(model: Recommender, skips: Skips, train: Interactions, *, k: int = 10) -> dict[str, float]:
    """How much a model still recommends what listeners skipped: the negatives' part of evaluation.

    ``skip_rate@k`` is the share of skipped pairs whose item is in the user's top ``k`` (training items
    excluded, as served: lower is better); ``skip_depth`` the mean share of the catalogue the model ranks above a
    skipped item (higher is better: skipped items sink). Only pairs whose user and item the model knows count.
    """
    users, items = skips.indices(train.user_ids, train.item_ids)
    if len(users) == 0:
        return {f"skip_rate@{k}": float("nan"), "skip_depth": float("nan"), "n_skips": 0.0}
    order = np.argsort(users, kind="stable")
    users, items = users[order], items[order]
    distinct = np.unique(users)
    top, _ = model.recommend(distinct, k, exclude=train.to_csr())
    row = np.searchsorted(distinct, users)
    in_top = (top[row] == items[:, None]).any(axis=1)
    history = train.to_csr()
    depths = []
    for start in range(0, len(distinct), 1024):
        batch = distinct[start : start + 1024]
        scores = model.score(batch).float().cpu().numpy()
        heard = history[batch]
        scores[heard.nonzero()] = -np.inf  # ranked as served: without what the listener already has
        candidates = np.maximum(scores.shape[1] - np.diff(heard.indptr) - 1, 1)
        mask = (users >= batch[0]) & (users <= batch[-1])
        rows = np.searchsorted(batch, users[mask])
        skipped = scores[rows, items[mask]]
        depths.append((scores[rows] > skipped[:, None]).sum(axis=1) / candidates[rows])
    depth = np.concatenate(depths)
    return {f"skip_rate@{k}": float(in_top.mean()), "skip_depth": float(depth.mean()), "n_skips": float(len(users))}


# --- reading PostgreSQL -----------------------------------------------------------------------------------------

_EPOCH = "floor(extract(epoch FROM ts))::bigint"
_WHERE = "($1::timestamptz IS NULL OR ts >= $1) AND ($2::timestamptz IS NULL OR ts < $2)"
_PLAYS_SQL = f"SELECT user_id, item_id, {_EPOCH} FROM plays WHERE {_WHERE}"
# Clicks and skips only when clean (feedback_checked, migration 0006: the A/B report's and the live fold-in's
# definition): a click on a list that was never served, or by another listener, trains nothing.
_CLICKS_SQL = (
    f"SELECT user_id, clicked_item, {_EPOCH} FROM feedback_checked "
    f"WHERE clean AND clicked_item IS NOT NULL AND {_WHERE}"
)
_SKIPS_SQL = (
    f"SELECT user_id, s.item, {_EPOCH} FROM feedback_checked CROSS JOIN LATERAL unnest(skipped_items) AS s(item) "
    f"WHERE clean AND {_WHERE}"
)


def read_postgres(dsn: str, window: LogWindow, *, timeout_s: float = 30.0) -> LogRows:
    """The window's plays, clicks and skips from the feedback database (``COPY`` out as CSV: fast for millions)."""
    return asyncio.run(_read_postgres(dsn, window, timeout_s))


async def _read_postgres(dsn: str, window: LogWindow, timeout_s: float) -> LogRows:
    conn = await connect(dsn, timeout=timeout_s)  # a bad URL or an outage: one line (ConfigError / DataError)
    try:
        tables = {name: await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name) for name in (PLAYS, FEEDBACK)}
        if not any(tables.values()):
            raise DataError(f"{redact(dsn)}: no plays or feedback table (has the feedback writer migrated it?)")
        if not tables[PLAYS]:
            logger.warning("%s: no plays table yet (migration 0003); reading clicks only", redact(dsn))
        empty: Columns = ([], [], [])
        args = (window.since, window.until)
        plays = await _copy_csv(conn, _PLAYS_SQL, args) if tables[PLAYS] else empty
        clicks = await _copy_csv(conn, _CLICKS_SQL, args) if tables[FEEDBACK] else empty
        skips = await _copy_csv(conn, _SKIPS_SQL, args) if tables[FEEDBACK] else empty
    except asyncpg.PostgresError as exc:
        raise DataError(f"{redact(dsn)}: reading the log failed ({exc})") from exc
    finally:
        await conn.close()
    return _rows(plays, clicks, skips)


async def _copy_csv(conn: asyncpg.Connection, sql: str, args: tuple[datetime | None, datetime | None]) -> Columns:
    buffer = io.BytesIO()
    await conn.copy_from_query(sql, *args, output=buffer, format="csv")
    if buffer.tell() == 0:
        return ([], [], [])
    buffer.seek(0)
    table = pa_csv.read_csv(
        buffer,
        read_options=pa_csv.ReadOptions(column_names=["user", "item", "time"]),
        convert_options=pa_csv.ConvertOptions(
            column_types={"user": pa.string(), "item": pa.string(), "time": pa.int64()},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    return (table["user"], table["item"], table["time"])


def _rows(plays: Columns, clicks: Columns, skips: Columns) -> LogRows:
    return LogRows(
        positive_users=np.concatenate([_strings(plays[0]), _strings(clicks[0])]),
        positive_items=np.concatenate([_strings(plays[1]), _strings(clicks[1])]),
        positive_times=np.concatenate([_ints(plays[2]), _ints(clicks[2])]),
        skip_users=_strings(skips[0]),
        skip_items=_strings(skips[1]),
        skip_times=_ints(skips[2]),
        n_clicks=len(clicks[0]),
    )


def _strings(column: Any) -> StrArray:
    """A string column (arrow array, chunked array or empty list) as a numpy unicode array."""
    if isinstance(column, list):
        return np.array(column, dtype=str)
    values = column.to_numpy() if isinstance(column, pa.ChunkedArray) else column.to_numpy(zero_copy_only=False)
    return np.asarray(values).astype(str) if len(values) else np.array([], dtype=str)


def _ints(column: Any) -> IntArray:
    return np.asarray(column, dtype=np.int64)


# --- reading the Parquet export ---------------------------------------------------------------------------------


def read_parquet(folder: Path, window: LogWindow) -> LogRows:
    """The window's plays, clicks and skips from an export folder; only the day partitions it touches are read."""
    plays = _read_days(folder / PLAYS, window, ["user_id", "item_id", "ts"])
    feedback = _read_days(folder / FEEDBACK, window, ["user_id", "clicked_item", "skipped_items", "ts", "clean"])
    if feedback is not None:
        feedback = feedback.filter(pc.fill_null(feedback["clean"], True))  # forged and orphan events train nothing
    empty: Columns = ([], [], [])
    play_cols: Columns = empty
    if plays is not None:
        play_cols = (plays["user_id"], plays["item_id"], _seconds(plays["ts"]))
    click_cols, skip_cols = empty, empty
    if feedback is not None:
        clicked = feedback.filter(pc.is_valid(feedback["clicked_item"]))
        click_cols = (clicked["user_id"], clicked["clicked_item"], _seconds(clicked["ts"]))
        lists = feedback["skipped_items"].combine_chunks()
        parents = pc.list_parent_indices(lists)
        skip_cols = (
            pc.take(feedback["user_id"], parents),
            pc.list_flatten(lists),
            _seconds(pc.take(feedback["ts"], parents)),
        )
    return _rows(play_cols, click_cols, skip_cols)


def _read_days(table_dir: Path, window: LogWindow, columns: list[str]) -> pa.Table | None:
    """Rows of one exported table inside the window, or ``None`` when no partition overlaps it."""
    if not table_dir.is_dir():
        return None
    first = None if window.since is None else window.since.astimezone(UTC).date()
    last = None if window.until is None else (window.until.astimezone(UTC) - timedelta(microseconds=1)).date()
    files: list[Path] = []
    for day_dir in sorted(table_dir.iterdir()):
        match = _DAY_DIR.match(day_dir.name)
        if not match or not day_dir.is_dir():
            continue
        try:
            day = date.fromisoformat(match[1])
        except ValueError as exc:
            raise DataError(f"{day_dir}: not a day partition ({exc})") from exc
        if (first is None or day >= first) and (last is None or day <= last):
            files.extend(sorted(day_dir.glob("*.parquet")))
    if not files:
        return None
    try:
        table = pa.concat_tables([_read_part(f, columns) for f in files], promote_options="default")
    except (OSError, pa.ArrowInvalid, KeyError) as exc:
        raise DataError(f"{table_dir}: cannot read the exported Parquet ({exc})") from exc
    if window.since is None and window.until is None:
        return table
    ts = table["ts"]
    keep = pc.and_(
        pa.scalar(True) if window.since is None else pc.greater_equal(ts, pa.scalar(window.since, ts.type)),
        pa.scalar(True) if window.until is None else pc.less(ts, pa.scalar(window.until, ts.type)),
    )
    return table.filter(keep)


def _read_part(path: Path, columns: list[str]) -> pa.Table:
    """One Parquet part; ``clean`` is read as null (kept) from exports made before the flag existed."""
    present = set(pq.read_schema(path).names)
    if "clean" in columns and "clean" not in present:
        logger.warning("%s: exported before the clean flag; its clicks and skips are all used", path)
        part = pq.read_table(path, columns=[c for c in columns if c != "clean"])
        return part.append_column("clean", pa.nulls(part.num_rows, pa.bool_()))
    return pq.read_table(path, columns=columns)


def _seconds(ts: Any) -> IntArray:
    """Epoch seconds (floored) of a timestamp column of any unit."""
    values = pa.chunked_array(ts) if not isinstance(ts, pa.ChunkedArray) else ts
    unit = values.type.unit
    per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit]
    raw = np.asarray(pc.cast(values, pa.int64()), dtype=np.int64)
    return np.floor_divide(raw, per_second)
