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


@pytest.fixture(scope="session")
def served_world():  # type: ignore[no-untyped-def]
    """The synthetic world the stack tests serve (its truth: genres, tastes)."""
    from trainer.data.synthetic import SyntheticConfig, generate

    return generate(SyntheticConfig(n_users=300, n_items=400, n_genres=8, mean_sessions_per_user=6, seed=3))


@pytest.fixture(scope="session")
def served_run(served_world, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """A small ALS run on ``served_world``: what the stack tests serve (fits in a second or two)."""
    from trainer.pipeline import save_result, train_and_evaluate

    run = tmp_path_factory.mktemp("served") / "als"
    # regularization 5 (not HetRec's tuned 40): on this small world, 5 plays then pull a folded-in listener clearly
    # toward their genre, which the live fold-in test measures.
    params = {"iterations": 8, "regularization": 5.0, "seed": 1}
    save_result(train_and_evaluate(served_world.interactions, "als", params), run)
    return run


@pytest.fixture(scope="session")
def small_als_run(small_world, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """A quick ALS run on ``small_world`` (4 sweeps), trained once for every test module that publishes one."""
    from trainer.pipeline import save_result, train_and_evaluate

    out = tmp_path_factory.mktemp("small-als") / "als"
    save_result(train_and_evaluate(small_world.interactions, "als", {"iterations": 4, "seed": 1}), out)
    return out


@pytest.fixture(scope="session")
def served_repository(served_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding version 1 of the factor family (``served_run``), for stacks of the tests' own."""
    from trainer.triton.publish import publish

    repository = tmp_path_factory.mktemp("served-repository")
    publish(served_run, repository)
    return repository


@pytest.fixture(scope="session")
def stack(served_run: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The whole local stack on free ports: PostgreSQL, Triton, feedback writer, two gateways, NGINX, Prometheus.

    Session-wide because it takes ~20 s to start; tests that stop a part (outage tests) start it again before they
    end. PostgreSQL gets a fresh folder of its own (initdb ~3 s): one shared by two test sessions at once made the
    second wait for a server on its port that the first one ran on another.
    """
    import os
    import shutil
    import tempfile

    from recsys.stack.local import LocalStack, StackConfig, StackPorts
    from trainer.triton.publish import publish

    repository = tmp_path_factory.mktemp("stack-repo")
    publish(served_run, repository)
    pg_dir = Path(tempfile.mkdtemp(prefix="recsys-pg-stack-", dir="/var/tmp" if os.geteuid() == 0 else None))
    config = StackConfig(
        model_repository=repository,
        workdir=tmp_path_factory.mktemp("stack"),
        ports=StackPorts.free(gateways=2),
        postgres_dir=pg_dir,
        gateways=2,
        prometheus=True,
        scrape_interval="1s",
    )
    local = LocalStack(config)
    try:
        local.postgres.start()
        with local:
            yield local
    finally:
        local.postgres.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)
        local.postgres.password_path.unlink(missing_ok=True)
        local.postgres.log_path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def log_postgres():  # type: ignore[no-untyped-def]
    """A PostgreSQL of the log-reading tests' own (fresh folder, free port), migrated as the writer does it; each
    module empties the tables it uses first. Its URL carries the generated password (``log_database``)."""
    import os
    import shutil
    import tempfile

    from tests_support import on_database

    from feedback.migrate import migrate
    from recsys.stack.ports import free_port
    from recsys.stack.postgres import LocalPostgres, find_bin_dir
    from recsys.stack.process import ServiceError

    try:
        find_bin_dir()
    except ServiceError as exc:
        pytest.skip(str(exc))
    data_dir = Path(tempfile.mkdtemp(prefix="recsys-pg-loop-", dir="/var/tmp" if os.geteuid() == 0 else None))
    postgres = LocalPostgres(data_dir, port=free_port())
    try:
        postgres.start()
        on_database(postgres.url, migrate)
        yield postgres
    finally:
        postgres.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
        postgres.password_path.unlink(missing_ok=True)
        postgres.log_path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def log_database(log_postgres) -> str:  # type: ignore[no-untyped-def]
    """The URL (with its password) of ``log_postgres``."""
    url: str = log_postgres.url
    return url


@pytest.fixture(scope="module")
def served(log_database: str, served_run: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The loop tests' Triton serving ``served_run`` as version 1, on an emptied ``log_database``."""
    from tests_support import Served, on_database

    from recsys.stack.triton import TritonConfig, TritonPorts, TritonServer
    from trainer.triton.publish import publish
    from trainer.triton.repository import load_all

    async def empty(conn):  # type: ignore[no-untyped-def]
        await conn.execute("TRUNCATE plays, feedback, impressions, retrain_cycles")

    on_database(log_database, empty)
    repository = tmp_path_factory.mktemp("loop-repo")
    publish(served_run, repository)
    with TritonServer(TritonConfig(model_repository=repository, ports=TritonPorts.auto())) as triton:
        load_all(triton, repository)
        yield Served(log_database, triton, repository)
