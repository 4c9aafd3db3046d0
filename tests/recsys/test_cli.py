"""The command line end to end, as a user runs it (a real subprocess, real files)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


def recsys(*args: str, cwd: Path, columns: int = 200) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RECSYS_PROGRESS": "false", "RECSYS_DEVICE": "cpu", "COLUMNS": str(columns)}
    return subprocess.run(
        [sys.executable, "-m", "recsys", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small play-count table with string ids, as a user would bring one."""
    import numpy as np

    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "plays.csv"
    lines = ["listener,artist,plays"]
    for user in range(60):
        taste = rng.integers(0, 4)
        items = rng.choice(np.arange(taste * 10, taste * 10 + 15), size=8, replace=False)
        lines += [f"user-{user},artist-{item},{rng.integers(1, 50)}" for item in items]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_train_writes_run_and_recommend_reads_it(tmp_path: Path, table: Path) -> None:
    run_dir = tmp_path / "run"
    args = ("--user-col", "listener", "--item-col", "artist", "--weight-col", "plays")
    done = recsys(
        "train",
        "--data",
        str(table),
        *args,
        "--model",
        "als",
        "-p",
        "iterations=5",
        "--out",
        str(run_dir),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("ndcg@10", "recall@20", "fit_seconds", "model", "n_users", "n_items"):
        assert key in metrics
    assert metrics["model"] == "als"
    assert metrics["params"]["iterations"] == 5
    assert metrics["n_users"] == 60
    assert "ndcg@10" in done.stdout

    shown = recsys("recommend", str(run_dir), "--user", "user-3", "-k", "5", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "artist-" in shown.stdout
    assert "top-5 for user user-3" in shown.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("train", "--data", "nowhere.csv"), "nowhere.csv: no such file or directory"),
        (("train", "--data", "TABLE"), "needs --user-col and --item-col"),
        (("train", "--data", "TABLE", "--user-col", "listener", "--item-col", "track"), "column 'track' not found"),
        (("train", "--model", "svd"), "unknown model 'svd'"),
        (("train", "-p", "factors=many"), "'many' is not a int"),
        (("train", "-p", "depth=3"), "als has no such parameter"),
        (("recommend", "missing-run", "--user", "1"), "no such run directory"),
        (("train", "--split", "sideways"), "unknown split 'sideways'"),
        (("train", "-p", "weighting=tfidf"), "unknown weighting 'tfidf'"),
        (("render-repo", "--out", "x", "--flavour", "nvidia"), "unknown flavour 'nvidia'"),
        (("tune", "--metric", "auc"), "unknown metric 'auc'"),
        (("train", "-p", "regularization=nan"), "ALS regularization=nan is out of range"),
        (("train", "--model", "bpr", "-p", "learning_rate=0"), "BPR learning_rate=0.0 is out of range"),
        (("publish", "missing-run"), "missing-run: no readable metrics.json"),
        (
            ("publish", "missing-run", "--ann", "lsh"),
            "unknown index kind 'lsh': inherit, auto, none, flat, ivf_flat, hnsw",
        ),
    ],
)
def test_bad_input_is_one_line_not_a_traceback(
    tmp_path: Path, table: Path, args: tuple[str, ...], message: str
) -> None:
    done = recsys(*(str(table) if a == "TABLE" else a for a in args), cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_scripting_and_whole_numbers(tmp_path: Path, table: Path) -> None:
    """`--json` writes one document (`-`: stdout, logs on stderr); a table piped at 60 columns keeps every number
    whole (it showed `66.1…`). (`train` refusing to overwrite a run: test_cli_errors.py.)"""
    from recsys.tables import METRIC_COLUMNS

    run_dir = tmp_path / "run"
    args = ("--data", str(table), "--user-col", "listener", "--item-col", "artist", "--model", "als")
    done = recsys("train", *args, "-p", "iterations=3", "--out", str(run_dir), "--json", "run.json", cwd=tmp_path,
                  columns=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert json.loads((tmp_path / "run.json").read_text()) == {"run_dir": str(run_dir), "metrics": metrics}
    assert "…" not in done.stdout
    for name, row in (("als", metrics), ("popularity (baseline)", metrics["baseline_popularity"])):
        line = next(line for line in done.stdout.splitlines() if line.startswith(name))
        assert line.split()[-6:-1] == [f"{row[column]:.4f}" for column in METRIC_COLUMNS]

    again = recsys("train", *args, "-p", "iterations=4", "--out", str(run_dir), "--json", "-", "--force", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    document = json.loads(again.stdout)  # the whole of stdout is one JSON document
    assert document["metrics"]["params"]["iterations"] == 4
    assert "run written to" in again.stderr
    assert not (tmp_path / "-").exists()

    shown = recsys(
        "recommend", str(run_dir), "--user", "user-3", "-u", "user-4", "-k", "5", "--json", "-", cwd=tmp_path
    )
    assert shown.returncode == 0, shown.stderr
    answer = json.loads(shown.stdout)
    assert [u["user_id"] for u in answer["users"]] == ["user-3", "user-4"]
    items = answer["users"][0]["items"]
    assert [i["rank"] for i in items] == [1, 2, 3, 4, 5]
    assert all(i["item_id"].startswith("artist-") for i in items)
    assert [i["score"] for i in items] == sorted((i["score"] for i in items), reverse=True)


def test_publish_refuses_a_run_worse_than_its_popularity_baseline(tmp_path: Path, table: Path) -> None:
    """Regression: a run trained with `-p regularization=nan` (worse than popularity) published without complaint.
    The gate reads the run's recorded metrics; here they say the run lost to its baseline."""
    run_dir = tmp_path / "run"
    args = ("--user-col", "listener", "--item-col", "artist", "--model", "als", "-p", "iterations=3")
    assert recsys("train", "--data", str(table), *args, "--out", str(run_dir), cwd=tmp_path).returncode == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["ndcg@10"] = metrics["baseline_popularity"]["ndcg@10"] / 2
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    repository = tmp_path / "repo"

    refused = recsys("publish", str(run_dir), "--repository", str(repository), cwd=tmp_path)
    assert refused.returncode == 2
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "below its popularity baseline" in refused.stderr
    assert "--force" in refused.stderr
    assert not repository.exists()

    forced = recsys("publish", str(run_dir), "--repository", str(repository), "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert "published version 1" in forced.stdout


def test_bad_setting_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "RECSYS_SEED": "many"}
    done = subprocess.run(
        [sys.executable, "-m", "recsys", "train"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "RECSYS_SEED" in done.stderr
    assert "Traceback" not in done.stderr


def test_help_lists_every_command(tmp_path: Path) -> None:
    done = recsys("--help", cwd=tmp_path)
    commands = ("train", "tune", "recommend", "demo", "publish", "render-repo", "serve", "simulate", "stack")
    for command in (*commands, "ab-report"):
        assert command in done.stdout


def _option_help(command: str, option: str) -> str:
    import typer.main

    from recsys.cli import app

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    params = {opt: p for p in commands[command].params for opt in p.opts}
    help_text = getattr(params[option], "help", None)
    assert isinstance(help_text, str)
    return help_text


def _names(help_text: str) -> set[str]:
    """``"als or bpr (why)."`` -> {"als", "bpr"}: the listed names, before any parenthesis."""
    return set(re.findall(r"[a-z0-9_]+", help_text.split("(")[0])) - {"or", "and"}


def test_model_help_names_every_registered_model() -> None:
    """Regression: `--model` said "popularity, bpr or als" after gru4rec had joined the registry."""
    from trainer.models.registry import MODELS

    assert _names(_option_help("train", "--model")) == set(MODELS)


def test_tune_model_help_names_only_the_tunable_models() -> None:
    from trainer.tune import SEARCH_SPACES

    assert _names(_option_help("tune", "--model")) == set(SEARCH_SPACES)


def test_publish_serve_and_hot_swap_through_the_cli(tmp_path: Path, table: Path) -> None:
    """`recsys serve triton` runs the real server; `recsys publish --load` swaps it to a new version."""
    import signal
    import socket
    import time

    from recsys.core.triton_client import TritonCallError, TritonRecommender
    from recsys.stack.triton import TritonControl

    args = ("--user-col", "listener", "--item-col", "artist", "--weight-col", "plays", "--model", "als")
    for name in ("r1", "r2"):
        done = recsys(
            "train", "--data", str(table), *args, "-p", "iterations=3", "--out", str(tmp_path / name), cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr
    repository = tmp_path / "repo"
    published = recsys("publish", str(tmp_path / "r1"), "--repository", str(repository), cwd=tmp_path)
    assert published.returncode == 0, published.stderr
    assert "published version 1" in published.stdout

    ports = []
    for _ in range(3):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    http, grpc, metrics = (str(p) for p in ports)
    env = {**os.environ, "RECSYS_PROGRESS": "false", "COLUMNS": "200"}
    console = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "recsys", "serve", "triton", "--repository", str(repository),
         "--http-port", http, "--grpc-port", grpc, "--metrics-port", metrics],
        cwd=tmp_path, env=env, stdout=console, stderr=subprocess.STDOUT,
    )  # fmt: skip
    control = TritonControl.at(f"127.0.0.1:{http}", timeout_s=5)
    try:
        deadline = time.monotonic() + 180  # readiness is polled, never assumed after a sleep
        while not (control.is_server_ready() and control.is_model_ready("recsys_b")):
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        key = (tmp_path / ".cache" / "stack" / "triton-key").read_text().strip()  # made by serve triton, 0600
        assert (tmp_path / ".cache" / "stack" / "triton-key").stat().st_mode & 0o077 == 0
        with pytest.raises(TritonCallError, match="restricted"):  # keyed APIs: inference without the key is refused
            TritonRecommender(f"127.0.0.1:{grpc}").recommend("recsys_a", ["user-3"])
        client = TritonRecommender(f"127.0.0.1:{grpc}", api_key=key)
        assert client.recommend("recsys_a", ["user-3"])[0].model_version == 1
        assert not control.is_model_ready("recsys_ann")  # version 1: a small catalogue, no index by default
        swapped = recsys(
            "publish", str(tmp_path / "r2"), "--repository", str(repository), "--ann", "flat",
            "--load", "--triton-http", f"127.0.0.1:{http}", cwd=tmp_path,
        )  # fmt: skip
        assert swapped.returncode == 0, swapped.stderr
        assert "loaded version 2 of" in swapped.stdout  # not the local stack's Triton: says what it did not check
        assert "approximate scorer (recsys_ann): flat index, recall@10 1.0000" in swapped.stdout
        served = ("recsys_a", "recsys_b", "recsys_ann")  # the swap loads the optional step version 2 has
        assert {client.recommend(m, ["user-3"])[0].model_version for m in served} == {2}
        client.close()
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
        console.close()
    assert code == 0, (tmp_path / "serve.log").read_text()
    assert "Triton ready" in (tmp_path / "serve.log").read_text()
    said = " ".join((tmp_path / "serve.log").read_text().split())
    assert "not served: recsys_ann (version 1 of the factor models was published without an approximate index" in said


def test_serve_without_a_published_version_says_so(tmp_path: Path) -> None:
    done = recsys("serve", "triton", "--repository", str(tmp_path / "empty"), cwd=tmp_path)
    assert done.returncode == 2
    assert "no published version yet" in done.stderr
