"""Fixtures of the stack tests beside tests/conftest.py's."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def served_repository(served_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding version 1 of the factor family (``served_run``), for stacks of the tests' own."""
    from trainer.triton.publish import publish

    repository = tmp_path_factory.mktemp("served-repository")
    publish(served_run, repository)
    return repository
