"""Who may connect to the local stack's PostgreSQL (issue 14): before, ``trust`` on TCP let any local user in as the
superuser (``COPY ... TO PROGRAM`` then ran commands as ``postgres``). Now: the ``recsys`` role with its generated
password over TCP, the superuser only over the socket in the 0700 data folder, and the password file is 0600."""

from __future__ import annotations

import asyncio
import os
import subprocess
import urllib.parse

import asyncpg
import pytest

from recsys.stack.postgres import LocalPostgres, find_bin_dir, with_local_password

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def postgres(log_postgres: LocalPostgres) -> LocalPostgres:
    assert urllib.parse.urlsplit(log_postgres.url).password, "the URL must carry the generated password"
    return log_postgres


def connect(url: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(url, timeout=10)
        await conn.close()

    asyncio.run(run())


def test_only_the_password_opens_the_database(postgres: LocalPostgres) -> None:
    connect(postgres.url)
    for user, database in (("recsys", "recsys"), ("postgres", "postgres")):
        with pytest.raises(asyncpg.InvalidPasswordError):
            connect(f"postgresql://{user}@127.0.0.1:{postgres.port}/{database}")
        with pytest.raises(asyncpg.InvalidPasswordError):
            connect(f"postgresql://{user + ':a-guess'}@127.0.0.1:{postgres.port}/{database}")
    assert postgres.password_path.stat().st_mode & 0o777 == 0o600


def test_the_application_role_is_no_superuser(postgres: LocalPostgres) -> None:
    async def run() -> tuple[bool, str]:
        conn = await asyncpg.connect(postgres.url)
        try:
            superuser = await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            try:
                await conn.execute("COPY (SELECT 1) TO PROGRAM 'id'")
                return superuser, "COPY TO PROGRAM ran"
            except asyncpg.InsufficientPrivilegeError as exc:
                return superuser, str(exc)
        finally:
            await conn.close()

    superuser, copy = asyncio.run(run())
    assert superuser is False
    assert "permission denied" in copy or "must be superuser" in copy or "privilege" in copy


def as_nobody(*command: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/nonexistent"}  # no PGPASSWORD, no .pgpass
    return subprocess.run(["runuser", "-u", "nobody", "--", *command], capture_output=True, text=True, env=env,
                          check=False, timeout=30)  # fmt: skip


def test_another_local_user_cannot_connect_or_read_the_password(postgres: LocalPostgres) -> None:
    if os.geteuid() != 0:
        pytest.skip("running a client as `nobody` needs root (CI runs the suite as root)")
    psql = str(find_bin_dir() / "psql")
    for user, database in (("postgres", "postgres"), ("recsys", "recsys")):
        tcp = as_nobody(psql, "-w", "-h", "127.0.0.1", "-p", str(postgres.port), "-U", user, "-d", database,
                        "-c", "SELECT 1")  # fmt: skip
        assert tcp.returncode != 0
        assert "no password supplied" in tcp.stderr, tcp.stderr
    socket = as_nobody(psql, "-w", "-h", str(postgres.data_dir), "-p", str(postgres.port), "-U", "postgres",
                       "-c", "SELECT 1")  # fmt: skip
    assert socket.returncode != 0
    assert "Permission denied" in socket.stderr, socket.stderr
    read = as_nobody("cat", str(postgres.password_path))
    assert read.returncode != 0
    assert "Permission denied" in read.stderr


def test_the_cli_fills_in_the_local_stacks_password(postgres: LocalPostgres) -> None:
    """RECSYS_DATABASE_URL's default names the stack's PostgreSQL without a password: the CLI adds the generated one
    (from the file only the stack's user can read); other URLs are used as given."""
    bare = f"postgresql://recsys@127.0.0.1:{postgres.port}/recsys"
    filled = with_local_password(bare, postgres.data_dir)
    assert filled == postgres.url
    connect(filled)
    given = f"postgresql://{'recsys:other'}@127.0.0.1:{postgres.port}/recsys"
    assert with_local_password(given, postgres.data_dir) == given
    remote = "postgresql://recsys@db.example.com:5432/recsys"
    assert with_local_password(remote, postgres.data_dir) == remote
    assert postgres.password not in postgres.display_url
