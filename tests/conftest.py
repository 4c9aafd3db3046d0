"""Shared fixtures: where the real data sets live (outside the repository, in ../shared)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
HETREC_DIR = SHARED_DATA / "hetrec2011-lastfm-2k"


@pytest.fixture(scope="session")
def hetrec_dir() -> Path:
    """The HetRec Last.fm 2K folder; tests that need it skip where ../shared/data is not laid out."""
    if not (HETREC_DIR / "user_artists.dat").is_file():
        pytest.skip(f"HetRec Last.fm 2K not found at {HETREC_DIR} (needs ../shared/data beside the repo)")
    return HETREC_DIR


@pytest.fixture(scope="session")
def small_world():  # type: ignore[no-untyped-def]
    """A small synthetic music world (fast to fit) shared by model and pipeline tests."""
    from trainer.data.synthetic import SyntheticConfig, generate

    return generate(SyntheticConfig(n_users=300, n_items=400, n_genres=8, mean_sessions_per_user=6, seed=3))


@pytest.fixture(scope="session")
def hetrec_split(hetrec_dir: Path):  # type: ignore[no-untyped-def]
    """The anchors' random-holdout split of HetRec (seed 42)."""
    from trainer.data.hetrec import load_hetrec
    from trainer.splits import random_holdout

    return random_holdout(load_hetrec(hetrec_dir))
