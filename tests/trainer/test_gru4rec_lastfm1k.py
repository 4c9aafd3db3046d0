"""GRU4Rec trained from a Last.fm-1K format log end to end: the loader's time-ordered plays -> sessions ->
temporal split -> training -> next-item evaluation, beating popularity. The log is written from a synthetic
world with sequential structure (the real 1K data set is not shipped)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trainer.data.lastfm1k import load_lastfm1k
from trainer.models.gru4rec import GRU4Rec, GRU4RecParams
from trainer.sessions import SessionPopularity, evaluate_next_item, sessions_of, temporal_split


def write_lastfm1k_log(world: Any, path: Path) -> int:
    """The world's plays as Last.fm-1K lines (user, ISO time, artist MBID, artist name, track id, track), newest
    first within each user as in the real file."""
    events, data = world.interactions.events, world.interactions
    lines = []
    for n in range(len(events) - 1, -1, -1):
        user = f"user_{int(data.user_ids.ids[events.users[n]]):06d}"
        when = datetime.fromtimestamp(int(events.timestamps[n]), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        artist = str(data.item_ids.ids[events.items[n]])
        lines.append(f"{user}\t{when}\tmbid-{artist}\tArtist {artist}\t\tTrack")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def test_gru4rec_learns_next_items_from_a_lastfm1k_log(small_world: Any, tmp_path: Path) -> None:
    log = tmp_path / "userid-timestamp-artid-artname-traid-traname.tsv"
    plays = write_lastfm1k_log(small_world, log)
    data = load_lastfm1k(log)
    assert data.events is not None
    assert len(data.events) == plays
    split = temporal_split(sessions_of(data), test_fraction=0.2)
    model = GRU4Rec(GRU4RecParams(layers=(32,), batch_size=32, n_sample=64, n_epochs=4)).fit_sessions(split.train)
    gru = evaluate_next_item(model, split.test)
    popularity = evaluate_next_item(SessionPopularity().fit(split.train), split.test)
    assert gru["recall@20"] > 1.5 * popularity["recall@20"]
    assert gru["mrr@20"] > 1.5 * popularity["mrr@20"]
