"""Training data from the feedback log: PostgreSQL and its Parquet export give the same data; decay, base runs,
skips as negatives, windows."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import numpy as np
import numpy.typing as npt
import pytest

from feedback.log_export import export_log
from recsys.core.errors import ConfigError, DataError
from recsys.stack.ports import free_port
from trainer.artifacts import load_run, save_run
from trainer.data.interactions import Interactions
from trainer.data.load import load_dataset
from trainer.data.log import LogRows, LogWindow, build, decay_weights, load_log, skip_metrics
from trainer.models import ALS, ALSParams

DAY = datetime(2026, 11, 30, tzinfo=UTC)


def _at(days: float, hours: float = 0) -> datetime:
    return DAY + timedelta(days=days, hours=hours)


# The log of the PostgreSQL tests: u1 plays i1 twice and clicks i2 on day 0, skips i3 and i4; u2 plays on day 1;
# u3 plays only on day 2 (outside a window that ends at day 2).
PLAYS = [
    ("p1", _at(0, 1), "u1", "i1"),
    ("p2", _at(0, 2), "u1", "i1"),
    ("p3", _at(1, 1), "u2", "i1"),
    ("p4", _at(1, 2), "u2", "i5"),
    ("p5", _at(2, 1), "u3", "i6"),
]
FEEDBACK = [
    ("f1", _at(0, 3), "r1", "u1", "A", "i2", ["i3", "i4"]),
    ("f2", _at(1, 3), "r2", "u2", "B", None, ["i2"]),
    # Not clean (feedback_checked): train nothing. A list never served; u1 claiming u2's list; an item not shown.
    ("x1", _at(0, 4), "r9", "u1", "A", "i7", ["i8"]),
    ("x2", _at(1, 4), "r2", "u1", "B", "i2", ["i9"]),
    ("x3", _at(0, 5), "r1", "u1", "A", "i6", []),
]
IMPRESSIONS = [
    ("r1", _at(0, 2), "u1", "A", "recsys_a", 1, ["i2", "i3", "i4"], 1.0, False),
    ("r2", _at(1, 2), "u2", "B", "recsys_b", 1, ["i2"], 1.0, False),
]


@pytest.fixture(scope="module")
def database(log_database: str) -> str:
    """The tests' own PostgreSQL (tests/conftest.py) holding the log above."""
    asyncio.run(_fill(log_database))
    return log_database


async def _fill(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("TRUNCATE plays, feedback, impressions")
        await conn.executemany("INSERT INTO plays (event_id, ts, user_id, item_id) VALUES ($1, $2, $3, $4)", PLAYS)
        await conn.executemany(
            "INSERT INTO feedback (event_id, ts, request_id, user_id, ab_group, clicked_item, skipped_items) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)",
            FEEDBACK,
        )
        await conn.executemany(
            "INSERT INTO impressions (request_id, ts, user_id, ab_group, model, model_version, items, latency_ms, "
            "fallback) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            IMPRESSIONS,
        )
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def exported(database: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("log")
    export_log(database, DAY.date(), DAY.date() + timedelta(days=3), out)
    return out


def _pairs(data: Interactions) -> dict[tuple[object, object], float]:
    users = data.user_ids.external(data.users).tolist()
    items = data.item_ids.external(data.items).tolist()
    return {(u, i): float(w) for u, i, w in zip(users, items, data.weights.tolist(), strict=True)}


def test_postgres_url_loads_plays_and_clicks_as_positives(database: str) -> None:
    """Regression: ``recsys train --data postgresql://...`` failed with 'no such file or directory'."""
    data = load_dataset(database, until=_at(2))
    assert _pairs(data) == {("u1", "i1"): 2.0, ("u1", "i2"): 1.0, ("u2", "i1"): 1.0, ("u2", "i5"): 1.0}
    assert data.events is not None
    assert len(data.events) == 5  # 4 plays and 1 click in the window


def test_the_export_gives_the_same_data_as_the_database(database: str, exported: Path) -> None:
    for window in (LogWindow(), LogWindow(since=_at(0, 2)), LogWindow(since=_at(1), until=_at(2))):
        db = load_log(database, since=window.since, until=window.until)
        files = load_log(exported, since=window.since, until=window.until)
        assert _pairs(db.interactions) == _pairs(files.interactions)
        assert db.interactions.timestamps is not None
        assert files.interactions.timestamps is not None
        assert sorted(db.interactions.timestamps.tolist()) == sorted(files.interactions.timestamps.tolist())
        assert sorted(zip(db.skips.user_ids.tolist(), db.skips.item_ids.tolist(), strict=True)) == sorted(
            zip(files.skips.user_ids.tolist(), files.skips.item_ids.tolist(), strict=True)
        )
        assert db.summary["plays"] == files.summary["plays"]
        assert db.summary["clicks"] == files.summary["clicks"]
    assert set(_pairs(load_dataset(str(exported))).keys()) >= {("u3", "i6")}


def test_skips_come_back_as_negatives_not_positives(database: str) -> None:
    log = load_log(database, until=_at(2))
    assert sorted(zip(log.skips.user_ids.tolist(), log.skips.item_ids.tolist(), strict=True)) == [
        ("u1", "i3"),
        ("u1", "i4"),
        ("u2", "i2"),
    ]
    assert ("u1", "i3") not in _pairs(log.interactions)
    users, items = log.skips.indices(log.interactions.user_ids, log.interactions.item_ids)
    # i3 and i4 were only ever skipped: unknown to the interactions, so only (u2, i2) has indices.
    assert log.interactions.user_ids.external(users).tolist() == ["u2"]
    assert log.interactions.item_ids.external(items).tolist() == ["i2"]
    assert log.summary == {
        "source": log.summary["source"],
        "since": None,
        "until": _at(2).isoformat(),
        "plays": 4,
        "clicks": 1,
        "skips": 3,
        "base_pairs": 0,
        "decay_days": None,
    }
    assert "127.0.0.1" in log.summary["source"]


def test_forged_and_mismatched_feedback_trains_nothing(database: str, exported: Path) -> None:
    """Only clean feedback (the A/B report's and the live fold-in's definition) reaches training, from both sources."""
    for source in (database, str(exported)):
        log = load_log(source, until=_at(2))
        assert ("u1", "i7") not in _pairs(log.interactions)
        assert ("u1", "i6") not in _pairs(log.interactions)
        assert log.summary["clicks"] == 1
        skipped = set(zip(log.skips.user_ids.tolist(), log.skips.item_ids.tolist(), strict=True))
        assert not skipped & {("u1", "i8"), ("u1", "i9")}


def test_an_export_made_before_the_clean_flag_still_loads(exported: Path, tmp_path: Path) -> None:
    import shutil

    import pyarrow.parquet as pq

    old = tmp_path / "old"
    shutil.copytree(exported, old)
    for part in (old / "feedback").rglob("*.parquet"):
        pq.write_table(pq.read_table(part).drop_columns(["clean"]), part)
    log = load_log(old, until=_at(2))
    assert log.summary["clicks"] == 4  # every click of the old export, as before the flag existed


def test_an_empty_window_is_a_one_line_error(database: str, exported: Path) -> None:
    for spec in (database, str(exported)):
        with pytest.raises(DataError, match="no plays or clicks"):
            load_dataset(spec, since=_at(10))


def test_bad_sources_and_options_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot connect"):
        load_dataset(f"postgresql://nobody:secret@127.0.0.1:{free_port()}/none")
    with pytest.raises(DataError, match=r"nobody:\*\*\*@"):
        load_dataset(f"postgresql://nobody:secret@127.0.0.1:{free_port()}/none")
    with pytest.raises(ConfigError, match="--since, --decay-days: only for the feedback log"):
        load_dataset("synthetic", since=DAY, decay_days=3.0)
    with pytest.raises(ConfigError, match="no time zone"):
        LogWindow(since=datetime(2026, 12, 1))
    with pytest.raises(ConfigError, match="not before"):
        LogWindow(since=_at(1), until=_at(1))
    with pytest.raises(DataError, match="not a feedback log export"):
        load_log(tmp_path)


# --- the pure part ----------------------------------------------------------------------------------------------


Row = tuple[str, str, datetime]


def _rows(plays: list[Row], skips: tuple[Row, ...] = (), clicks: int = 0) -> LogRows:
    def seconds(values: list[datetime]) -> npt.NDArray[np.int64]:
        return np.array([int(v.timestamp()) for v in values], dtype=np.int64)

    return LogRows(
        positive_users=np.array([p[0] for p in plays], dtype=str),
        positive_items=np.array([p[1] for p in plays], dtype=str),
        positive_times=seconds([p[2] for p in plays]),
        skip_users=np.array([s[0] for s in skips], dtype=str),
        skip_items=np.array([s[1] for s in skips], dtype=str),
        skip_times=seconds([s[2] for s in skips]),
        n_clicks=clicks,
    )


def test_decay_halves_a_weight_every_half_life() -> None:
    now = int(_at(14).timestamp())
    ages = np.array([now, now - 7 * 86_400, now - 14 * 86_400, now + 3600])
    np.testing.assert_allclose(decay_weights(ages, now, 7.0), [1.0, 0.5, 0.25, 1.0], rtol=1e-6)
    with pytest.raises(ConfigError, match="half-life"):
        decay_weights(ages, now, 0.0)

    rows = _rows([("1", "10", _at(0)), ("1", "10", _at(7)), ("2", "10", _at(14))])
    data = build(rows, window=LogWindow(until=_at(14)), decay_days=7.0).interactions
    assert _pairs(data) == pytest.approx({(1, 10): 0.25 + 0.5, (2, 10): 1.0})


def test_integer_ids_stay_integers_and_mixed_ids_become_strings() -> None:
    log = build(_rows([("1", "10", _at(0)), ("2", "-3", _at(0))], skips=(("2", "10", _at(1)),)))
    ints = log.interactions
    assert ints.user_ids.is_integer
    users, items = log.skips.indices(ints.user_ids, ints.item_ids)  # skips take the id maps' type
    assert (ints.user_ids.external(users).tolist(), ints.item_ids.external(items).tolist()) == ([2], [10])
    assert ints.item_ids.ids.tolist() == [-3, 10]
    mixed = build(_rows([("1", "10", _at(0)), ("u2", "010", _at(0))])).interactions
    assert mixed.user_ids.ids.tolist() == ["1", "u2"]
    assert mixed.item_ids.ids.tolist() == ["010", "10"]  # "010" is not the integer 10


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run on integer ids: users 1, 2 and items 10, 11, 12 with play counts."""
    frame_users = np.array([0, 0, 1, 1], dtype=np.int32)
    frame_items = np.array([0, 1, 1, 2], dtype=np.int32)
    from trainer.data.interactions import IdMap

    data = Interactions(
        users=frame_users,
        items=frame_items,
        weights=np.array([3.0, 1.0, 2.0, 5.0], dtype=np.float32),
        user_ids=IdMap(np.array([1, 2])),
        item_ids=IdMap(np.array([10, 11, 12])),
    )
    model = ALS(ALSParams(factors=4, iterations=2)).fit(data)
    run = tmp_path_factory.mktemp("base") / "als"
    save_run(run, model, data, {})
    return run


def test_a_base_run_is_merged_in_at_the_cut_off(base_run: Path) -> None:
    rows = _rows([("2", "12", _at(1)), ("3", "10", _at(2)), ("3", "13", _at(2))])
    log = build(rows, window=LogWindow(since=_at(0), until=_at(3)), base=load_run(base_run))
    data = log.interactions
    assert _pairs(data) == {
        (1, 10): 3.0,
        (1, 11): 1.0,
        (2, 11): 2.0,
        (2, 12): 5.0 + 1.0,  # the base run's five plays and one new
        (3, 10): 1.0,
        (3, 13): 1.0,
    }
    assert data.user_ids.ids.tolist() == [1, 2, 3]  # new user 3 and new item 13 appended to the base's ids
    assert data.item_ids.ids.tolist() == [10, 11, 12, 13]
    assert data.timestamps is not None
    first = dict(zip(_pairs(data), data.timestamps.tolist(), strict=True))
    assert first[(1, 10)] == int(_at(0).timestamp())  # base pairs date from the cut-off
    assert first[(3, 13)] == int(_at(2).timestamp())
    assert data.events is not None
    assert len(data.events) == 3  # events are the log's plays only
    assert log.summary["base_pairs"] == 4

    decayed = build(rows, window=LogWindow(since=_at(0), until=_at(3)), base=load_run(base_run), decay_days=3.0)
    assert _pairs(decayed.interactions)[(1, 10)] == pytest.approx(3.0 * 0.5)  # 3 days before the window's end

    only_base = load_log_from_base(base_run)
    assert _pairs(only_base) == {k: v for k, v in _pairs(data).items() if k[0] != 3 and k != (2, 12)} | {(2, 12): 5.0}


def load_log_from_base(run: Path) -> Interactions:
    """An empty log merged with a base run is the base run's history again."""
    return build(LogRows.empty(), window=LogWindow(since=_at(0), until=_at(1)), base=load_run(run)).interactions


def test_string_log_ids_turn_an_integer_base_into_strings(base_run: Path) -> None:
    data = build(_rows([("listener-9", "10", _at(1))]), base=load_run(base_run)).interactions
    assert data.user_ids.ids.tolist() == ["1", "2", "listener-9"]
    assert data.item_ids.is_integer  # items are still all integers


def test_skip_metrics_see_a_model_that_ranks_skipped_items_first(small_world) -> None:  # type: ignore[no-untyped-def]
    from trainer.data.log import Skips

    train = small_world.interactions
    model = ALS(ALSParams(iterations=4)).fit(train)
    users = np.arange(50)
    top, _ = model.recommend(users, 1, exclude=train.to_csr())
    skipped_top = Skips(train.user_ids.external(users), train.item_ids.external(top[:, 0]), np.zeros(50, np.int64))
    worst = skip_metrics(model, skipped_top, train)
    assert worst["skip_rate@10"] == 1.0
    assert worst["skip_depth"] == 0.0
    assert worst["n_skips"] == 50.0
    rng = np.random.default_rng(0)
    random_items = rng.integers(0, train.n_items, 50)
    random_skips = Skips(train.user_ids.external(users), train.item_ids.external(random_items), np.zeros(50, np.int64))
    assert skip_metrics(model, random_skips, train)["skip_depth"] > 0.3


def test_recsys_train_on_the_log_records_its_skips_and_where_its_data_ends(
    log_database: str, small_world: object, tmp_path: Path
) -> None:
    """`recsys train --data postgresql://...`: the run's metrics say how often the model ranks what listeners
    skipped, and where its data ends (the next retrain reads the log from there, never twice)."""
    import json
    from datetime import UTC, datetime

    from tests_support import log_plays
    from typer.testing import CliRunner

    from recsys.cli import app

    asyncio.run(_fill(log_database))  # the skips of FEEDBACK, by listeners u1/u2
    log_plays(log_database, small_world, datetime.now(UTC))
    result = CliRunner().invoke(
        app, ["train", "--data", log_database, "--model", "als", "-p", "iterations=2", "--out", str(tmp_path / "run")]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["skips"]) == {"skip_rate@10", "skip_depth", "n_skips"}
    assert datetime.fromisoformat(metrics["log"]["until"]) <= datetime.now(UTC)
    assert metrics["log"]["plays"] > 1000
