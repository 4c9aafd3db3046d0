"""The local stack's generated secrets are readable by their owner only (issue 14 review: a stale ``<file>.tmp``
with looser permissions was reopened with O_TRUNC and kept its mode, so the new secret was written world-readable
before it replaced the file)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from recsys.stack.credentials import stack_secret


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_secret_is_0600_even_over_a_stale_world_readable_tmp(tmp_path: Path) -> None:
    path = tmp_path / "feedback-token"
    stale = tmp_path / "feedback-token.tmp"
    stale.write_text("left by an interrupted start\n")
    stale.chmod(0o666)
    previous = os.umask(0)  # the most permissive umask: the mode must come from the code
    try:
        value = stack_secret(path)
    finally:
        os.umask(previous)
    assert mode(path) == 0o600
    assert path.read_text() == value + "\n"
    assert len(value) >= 43  # 256 bits, URL-safe base64
    assert not stale.exists()
    assert stack_secret(path) == value  # read back on the next start


def test_a_tmp_that_is_a_link_is_never_written_through(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("not a secret\n")
    target.chmod(0o644)
    (tmp_path / "db-password.tmp").symlink_to(target)
    value = stack_secret(tmp_path / "db-password")
    assert target.read_text() == "not a secret\n"
    assert mode(target) == 0o644
    assert mode(tmp_path / "db-password") == 0o600
    assert (tmp_path / "db-password").read_text() == value + "\n"


def test_an_existing_secret_copied_with_looser_permissions_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "feedback-token"
    path.write_text("kept\n")
    path.chmod(0o644)
    assert stack_secret(path) == "kept"
    assert mode(path) == 0o600
