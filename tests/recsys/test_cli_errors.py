"""Every command of ``recsys`` walked with bad input: one line on stderr, exit status 2, never a traceback.

The walk reads the command tree from the typer app itself, so a command or option added later is walked too. It
runs in-process (``recsys.cli.invoke``, what the ``recsys`` entry point runs): a parse error costs microseconds,
so every option of every command is tried. The reproductions of issue 15 run as real processes.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import typer.main

from recsys.cli import app, invoke

REPO = Path(__file__).resolve().parents[2]


def _leaves(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    children = getattr(command, "commands", None)
    if not children:
        yield path, command
        return
    for name, child in children.items():
        yield from _leaves(child, (*path, name))


LEAVES = dict(_leaves(typer.main.get_command(app)))


def _annotation(param: Any) -> Any:
    return param.type_descriptor.annotation


def _filler(param: Any) -> list[str]:
    """A well-formed value for a required parameter, so that the bad one is what fails."""
    kind = _annotation(param)
    value = {datetime: "2026-01-01", int: "1", float: "1"}.get(kind, "x")
    return [value] if param.param_type_name == "argument" else [param.opts[0], value]


def _required(command: Any, *, besides: Any = None) -> list[str]:
    return [v for p in command.params if p.required and p is not besides for v in _filler(p)]


def _numeric_options() -> list[tuple[tuple[str, ...], Any]]:
    return [
        (path, p)
        for path, command in LEAVES.items()
        for p in command.params
        if p.param_type_name == "option" and _annotation(p) in (int, float)
    ]


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    """The CLI configures the root logger (as a process should); give the next test its own back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _one_line_error(capsys: pytest.CaptureFixture[str], status: int) -> str:
    captured = capsys.readouterr()
    assert status == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def test_the_walk_covers_every_command() -> None:
    """The walk is only as good as the tree it reads: every command users know is in it."""
    names = {" ".join(path) for path in LEAVES}
    expected = {"train", "tune", "recommend", "demo", "publish", "simulate", "ab-report", "serve triton", "stack up"}
    assert expected <= names
    assert len(_numeric_options()) >= 20


@pytest.mark.parametrize("path", sorted(LEAVES), ids=" ".join)
def test_an_unknown_option_is_one_line(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    status = invoke([*path, *_required(LEAVES[path]), "--no-such-option"])
    assert "--no-such-option" in _one_line_error(capsys, status)


@pytest.mark.parametrize(
    ("path", "option"), _numeric_options(), ids=lambda x: " ".join(x) if isinstance(x, tuple) else x.opts[0]
)
@pytest.mark.parametrize("value", ["nan", "not-a-number"])
def test_a_number_that_is_not_one_is_one_line(
    path: tuple[str, ...], option: Any, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``nan`` parses as a float: each float option must refuse it itself (click's ranges let it through)."""
    command = LEAVES[path]
    status = invoke([*path, *_required(command, besides=option), option.opts[0], value])
    assert option.opts[0] in _one_line_error(capsys, status)


@pytest.mark.parametrize(
    ("path", "option"),
    [(path, p) for path, p in _numeric_options() if p.min is not None],
    ids=lambda x: " ".join(x) if isinstance(x, tuple) else x.opts[0],
)
def test_a_number_below_its_range_is_one_line(
    path: tuple[str, ...], option: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    command = LEAVES[path]
    status = invoke([*path, *_required(command, besides=option), option.opts[0], str(option.min - 1)])
    assert option.opts[0] in _one_line_error(capsys, status)


@pytest.mark.parametrize(
    "args",
    [
        ("simulate", "--listeners", "-5"),
        ("simulate", "--listeners", "0"),
        ("simulate", "--seed", "-1"),
        ("simulate", "--requests", "0"),
        ("ab-report", "--alpha", "1.5"),
        ("ab-report", "--planned-users", "0"),
        ("recommend", "run", "--user", "1", "-k", "0"),
        ("train", "--decay-days", "inf"),
        ("retrain", "--canary", "100"),
    ],
    ids=" ".join,
)
def test_issue_15_options_out_of_range(args: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: ``--listeners -5`` and ``--seed -1`` were tracebacks, ``--listeners 0`` printed nothing."""
    line = _one_line_error(capsys, invoke(list(args)))
    assert args[-2] in line


def test_a_hyperparameter_out_of_range_fails_before_the_data_loads(capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: ``-p regularization=nan`` trained a model worse than popularity; now refused at once."""
    line = _one_line_error(capsys, invoke(["train", "--data", "nowhere.csv", "-p", "regularization=nan"]))
    assert "regularization=nan is out of range" in line  # not "nowhere.csv: no such file": checked first


def test_train_refuses_to_overwrite_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    line = _one_line_error(capsys, invoke(["train", "--out", str(run)]))
    assert "--force" in line
    assert (run / "metrics.json").read_text() == "{}"


@pytest.mark.parametrize("command", [["train"], ["recommend", "run", "--user", "1"]], ids=" ".join)
def test_json_into_a_missing_folder_fails_first(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _one_line_error(capsys, invoke([*command, "--json", str(tmp_path / "nowhere" / "out.json")]))
    assert "nowhere does not exist" in line


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    assert invoke(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"recsys {version('recsys')}"


def test_shell_completion_is_on(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:  # typer's completion exits by itself
        invoke(["--show-completion", "bash"])
    assert done.value.code == 0
    script = capsys.readouterr().out
    assert "complete" in script
    assert "recsys" in script


# --- as users run it: real processes ------------------------------------------------------------------------------


def _recsys(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "RECSYS_PROGRESS": "false", "COLUMNS": "40", **env}
    return subprocess.run(
        [sys.executable, "-m", "recsys", *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120
    )


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again when the block ends: nothing listens there


def _assert_one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # COLUMNS=40: a long message is not wrapped either
    assert "Traceback" not in done.stderr
    return lines[0]


def test_simulate_without_a_stack_is_one_line(tmp_path: Path) -> None:
    """Regression: `recsys simulate` with no stack running printed a 312-line traceback."""
    url = f"http://127.0.0.1:{_closed_port()}"
    line = _assert_one_line(_recsys("simulate", "--url", url, "--listeners", "3", cwd=tmp_path))
    assert f"nothing answers at {url}" in line


def test_ab_report_with_a_bad_database_url_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: ``RECSYS_DATABASE_URL=notaurl recsys ab-report`` was a traceback."""
    monkeypatch.setenv("RECSYS_DATABASE_URL", "notaurl")
    monkeypatch.setenv("RECSYS_EXPERIMENT_FILE", str(REPO / "gateway" / "experiment.yaml"))
    assert "RECSYS_DATABASE_URL=notaurl: not a usable PostgreSQL URL" in _one_line_error(capsys, invoke(["ab-report"]))


def test_ab_report_json_into_a_missing_folder_is_one_line_before_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression (issue 14): it exited 1 with a bare message, after reading the database."""
    monkeypatch.setenv("RECSYS_DATABASE_URL", f"postgresql://recsys@127.0.0.1:{_closed_port()}/recsys")
    monkeypatch.setenv("RECSYS_EXPERIMENT_FILE", str(REPO / "gateway" / "experiment.yaml"))
    missing = tmp_path / "missing" / "report.json"
    line = _one_line_error(capsys, invoke(["ab-report", "--json", str(missing)]))
    assert f"--json {missing}: folder {missing.parent} does not exist" in line
    line = _one_line_error(capsys, invoke(["ab-report", "--json", str(tmp_path / "report.json")]))
    assert "cannot connect to PostgreSQL" in line


BAD_PORT_URL = "postgresql://recsys:FAKEPW@127.0.0.1:notaport/db"


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (("ab-report",), {"RECSYS_DATABASE_URL": BAD_PORT_URL}),
        (("feedback", "export", "--out", "export", "--since", "2026-12-01"), {"RECSYS_DATABASE_URL": BAD_PORT_URL}),
        (("train", "--data", BAD_PORT_URL, "--out", "run"), {}),
    ],
    ids=["ab-report", "feedback export", "train --data"],
)
def test_a_database_url_with_a_port_that_is_not_a_number_is_one_line(
    args: tuple[str, ...], env: dict[str, str], tmp_path: Path
) -> None:
    """Regression (issue 15's review): asyncpg's parser raised ValueError, a 130-line traceback and exit 1, with
    the URL's password in it."""
    experiment = str(REPO / "gateway" / "experiment.yaml")
    done = _recsys(*args, cwd=tmp_path, RECSYS_EXPERIMENT_FILE=experiment, **env)
    line = _assert_one_line(done)
    assert "postgresql://recsys:***@127.0.0.1:notaport/db: not a usable PostgreSQL URL" in line
    assert "FAKEPW" not in done.stderr + done.stdout


def test_retrain_with_a_database_url_it_cannot_use_says_so_without_a_traceback(tmp_path: Path) -> None:
    """Regression: recording the cycle (recsys/loop/records.py) let asyncpg's ValueError through: 150 lines."""
    (tmp_path / "repository").mkdir()
    done = _recsys("retrain", "--repository", "repository", cwd=tmp_path, RECSYS_DATABASE_URL=BAD_PORT_URL)
    assert "Traceback" not in done.stderr
    assert "FAKEPW" not in done.stderr + done.stdout
    assert "cannot record the retrain cycle: postgresql://recsys:***@127.0.0.1:notaport/db" in done.stderr
