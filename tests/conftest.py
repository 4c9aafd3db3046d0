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
