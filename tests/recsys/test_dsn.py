"""Database URLs: :func:`recsys.core.dsn.redact` hides every spelling of a password, :func:`connect` turns every
failure into one line without it, and a run trained on the log records and prints no password (issue 15's
review: ``train --data postgresql://user:<password>@host/db`` wrote the password into metrics.json, which is
published)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from recsys.core.dsn import connect, redact, scrub
from recsys.core.errors import ConfigError, DataError
from recsys.stack.ports import free_port

CASES = [
    ("postgresql://recsys:FAKEPW@127.0.0.1:5432/db", "postgresql://recsys:***@127.0.0.1:5432/db"),
    ("postgres://:secret@host/db", "postgres://:***@host/db"),  # no user: the old redactor kept it
    ("postgres://u@h/db?password=x&sslmode=require", "postgres://u@h/db?password=***&sslmode=require"),
    ("postgres://u@h/db?sslmode=verify-full&sslpassword=k", "postgres://u@h/db?sslmode=verify-full&sslpassword=***"),
    ("postgres://u@h/db?PASSWORD=x", "postgres://u@h/db?PASSWORD=***"),
    ("postgres://u@h/db?pass%77ord=x", "postgres://u@h/db?pass%77ord=***"),  # asyncpg decodes the key
    ("postgres://u:fake%40b@h1:5432,h2:5433/db", "postgres://u:***@h1:5432,h2:5433/db"),
    ("postgres://u:pa/ss@h/db", "postgres://***@h/db"),  # '/' not encoded: all of the userinfo goes
    ("postgres://u:fake@ss@h/db", "postgres://u:***@h/db"),
    ("postgres://u:fake#s?s@h/db?password=q", "postgres://***@h/db?password=***"),
    ("host=db user=u password='a b' dbname=x", "host=db user=u password=*** dbname=x"),
    ("postgresql://u@h/db", "postgresql://u@h/db"),
    ("notaurl", "notaurl"),
]


@pytest.mark.parametrize(("dsn", "shown"), CASES)
def test_redact_hides_every_spelling_of_a_password(dsn: str, shown: str) -> None:
    assert redact(dsn) == shown
    assert redact(shown) == shown  # redacting twice changes nothing


# Passwords of any characters (percent-encoded, as a URL carries them), users possibly empty, any host and port.
_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)
_host = st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True)


@given(user=st.text(max_size=10), password=_text, host=_host, port=st.integers(1, 65535), query_pw=_text)
def test_no_password_survives_redaction(user: str, password: str, host: str, port: int, query_pw: str) -> None:
    dsn = f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/db"
    assert redact(dsn) == f"postgresql://{quote(user, safe='')}:***@{host}:{port}/db"
    with_query = f"{dsn}?sslmode=require&sslpassword={quote(query_pw, safe='')}"
    assert redact(with_query).endswith("?sslmode=require&sslpassword=***")
    assume("*" not in password)  # '***' itself would contain it
    message = f"failed for {dsn}: password {password} / {quote(password, safe='')} rejected"
    assert quote(password, safe="") not in scrub(message, dsn)
    assert password not in scrub(message, dsn)


@pytest.mark.parametrize(
    ("dsn", "kind", "says"),
    [
        ("postgresql://recsys:FAKEPW@127.0.0.1:notaport/db", ConfigError, "not a usable PostgreSQL URL"),
        ("postgresql://recsys:FAKEPW@127.0.0.1:99999/db", ConfigError, "not a usable PostgreSQL URL"),
        ("postgresql://recsys:FAKEPW@[::1/db", ConfigError, "not a usable PostgreSQL URL"),
        ("postgresql://recsys:FAKEPW@127.0.0.1/db?sslmode=bogus", ConfigError, "not a usable PostgreSQL URL"),
        ("notaurl", ConfigError, "not a usable PostgreSQL URL"),
        (f"postgresql://recsys:FAKEPW@127.0.0.1:{free_port()}/db", DataError, "cannot connect to PostgreSQL"),
    ],
)
def test_every_connect_failure_is_one_line_without_the_password(dsn: str, kind: type[Exception], says: str) -> None:
    with pytest.raises(kind) as raised:
        asyncio.run(connect(dsn, timeout=5))
    message = str(raised.value)
    assert says in message
    assert "FAKEPW" not in message
    assert "\n" not in message
    assert raised.value.__cause__ is None  # no chained traceback (with the password in it) to print
    assert raised.value.__suppress_context__


def test_a_wrong_password_is_refused_without_showing_it(log_database: str) -> None:
    wrong = redact(log_database).replace("***", "WRONGPW", 1)
    with pytest.raises(DataError, match="PostgreSQL refused the connection") as raised:
        asyncio.run(connect(wrong, timeout=5))
    assert "WRONGPW" not in str(raised.value)


def test_recsys_train_on_a_database_url_records_and_prints_no_password(
    log_database: str, small_world: object, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The real command against the tests' PostgreSQL (its URL carries the generated password): metrics.json and
    ``--json -`` say where the data came from, without the password."""
    from datetime import UTC, datetime

    from tests_support import log_plays, on_database

    from recsys.cli import invoke

    password = log_database.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    assert password  # the fixture's URL does carry one: the test would prove nothing otherwise
    on_database(log_database, lambda conn: conn.execute("TRUNCATE plays"))  # the session's database: other tests'
    log_plays(log_database, small_world, datetime.now(UTC))  # plays carry the same event ids
    run = tmp_path / "run"
    status = invoke(
        ["train", "--data", log_database, "--model", "als", "-p", "iterations=1", "--out", str(run), "--json", "-"]
    )
    captured = capfd.readouterr()
    assert status == 0, captured.err
    printed = json.loads(captured.out)
    recorded = (run / "metrics.json").read_text()
    assert json.loads(recorded)["data"] == redact(log_database)
    assert printed["metrics"]["data"] == redact(log_database)
    for text in (recorded, captured.out, captured.err):
        assert password not in text
