"""``recsys demo``: the main job on the embedded synthetic data, end to end.

Train popularity, BPR and ALS and compare them; show a few listeners' top-10; then (``serve``) publish ALS, start
the whole local stack on free ports, answer through Triton over gRPC and through NGINX over REST, run a short
simulated personal-vs-popular experiment and print its A/B report, log organic plays and run one cycle of the
training loop (new releases, a gated warm retrain); everything is stopped at the end.
"""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from recsys.ab_report import print_ab_report
from recsys.core.errors import ConfigError
from recsys.core.settings import Settings
from recsys.tables import metrics_table, recommendation_table, show

MODELS = ("popularity", "bpr", "als")
#: The demo's experiment: personal ALS (group A) against the popularity baseline (group B).
EXPERIMENT_FILE = Path(__file__).resolve().parents[1] / "gateway" / "experiments" / "personal-vs-popular.yaml"


def run_demo(out: Console, settings: Settings, out_dir: Path, *, users: int, serve: bool, listeners: int) -> None:
    """Trains and compares the three models into ``out_dir``, prints ``users`` listeners' top-10, and with
    ``serve`` runs the serving part (:func:`serve_demo`)."""
    from trainer.artifacts import load_run
    from trainer.data.synthetic import SyntheticConfig, generate
    from trainer.pipeline import save_result, train_and_evaluate

    world = generate(SyntheticConfig())
    data = world.interactions
    out.print(
        f"synthetic music world: {data.n_users} listeners, {data.n_items} artists, {len(data)} listener-artist "
        f"pairs from {len(data.events) if data.events is not None else 0} plays"
    )
    rows: dict[str, dict[str, Any]] = {}
    for name in MODELS:
        result = train_and_evaluate(
            data, name, seed=settings.seed, device=settings.device, show_progress=settings.progress, source="synthetic"
        )
        save_result(result, out_dir / name)
        rows[name] = result.metrics
    show(out, metrics_table(rows, "synthetic · random-holdout"))
    run = load_run(out_dir / "als")
    for external in run.user_ids.ids[:users].tolist():
        index = run.user_ids.index(external)
        assert index is not None
        items, scores = run.model.recommend([index], 10, exclude=run.history)
        show(out, recommendation_table(run, external, items[0], scores[0]))
    out.print(f"runs written to {out_dir}")
    if serve:
        serve_demo(out, out_dir, [str(u) for u in run.user_ids.ids[:users].tolist()], world, listeners)


def serve_demo(out: Console, out_dir: Path, user_ids: list[str], world: Any, listeners: int) -> None:
    """Publishes the demo's ALS run, starts the whole local stack (PostgreSQL, Triton, writer, gateway, NGINX) on
    free ports, answers through Triton over gRPC and through NGINX over REST, runs a short simulated
    personal-vs-popular experiment and prints its A/B report; stops everything at the end."""
    import httpx

    from recsys.core.triton_client import TritonRecommender
    from recsys.simulate import simulate
    from recsys.stack.local import LocalStack, StackConfig, StackPorts
    from recsys.stack.postgres import default_data_dir
    from trainer.triton.family import ENSEMBLE_A, ENSEMBLE_B
    from trainer.triton.publish import publish as run_publish

    repository = out_dir / "model_repository"
    shutil.rmtree(repository, ignore_errors=True)
    published = run_publish(out_dir / "als", repository)
    out.print(f"published ALS as version {published.version} into {repository} (TorchScript and ONNX, parity ok)")
    config = StackConfig(
        model_repository=repository,
        workdir=out_dir / "stack",
        ports=StackPorts.free(),
        experiment_file=EXPERIMENT_FILE,
        postgres_dir=default_data_dir().with_name(default_data_dir().name + "-demo"),
    )
    stack = LocalStack(config)
    stack.postgres.start()
    stack.postgres.reset_database()  # the demo's own database: each demo reports on its own traffic only
    started = datetime.now(UTC)
    with stack:
        out.print(f"stack up: NGINX {stack.nginx_url} -> gateway {stack.gateway_url} -> Triton, writer -> PostgreSQL")
        client = TritonRecommender(f"127.0.0.1:{config.ports.triton_grpc}", api_key=stack.triton_key)
        try:
            for model in (ENSEMBLE_A, ENSEMBLE_B):
                for answer in client.recommend(model, [*user_ids[:1], "listener-nobody-knows"], top_k=10):
                    kind = "popularity fallback" if answer.fallback else "personal"
                    out.print(
                        f"Triton {model} v{answer.model_version} over gRPC: user {answer.user_id} ({kind}) -> "
                        f"{', '.join(answer.item_ids)}"
                    )
        finally:
            client.close()
        user = user_ids[0]
        body = httpx.post(
            f"{stack.nginx_url}/recommend", json={"user_id": user, "top_k": 5}, headers={"X-User-Id": user}
        ).json()
        out.print(f"REST through NGINX: POST /recommend {{user_id: {user}, top_k: 5}} ->")
        out.print_json(data=body)
        out.print(f"simulating {listeners} listeners x 5 requests (clicks and skips by their true tastes) ...")
        summary = asyncio.run(simulate(stack.nginx_url, world, listeners=listeners, requests_per_listener=5))
        if summary.errors:
            raise ConfigError(f"simulation saw errors: {dict(summary.errors)}")
        stack.wait_drained()
        print_ab_report(
            out, stack.database_url, stack.experiment, started, datetime.now(UTC), planned_users=2 * listeners,
            json_out=out_dir / "ab-report.json", plot=out_dir / "ab-report.png", bucket="minute",
        )  # fmt: skip
        one_loop_cycle(out, stack, repository, world, out_dir / "loop", started)
    out.print("stack stopped")


def one_loop_cycle(out: Console, stack: Any, repository: Path, world: Any, workdir: Path, started: datetime) -> None:
    """The way back: listeners play music in their own player, then one cycle of the training loop (new releases,
    then a gated warm retrain on the log) runs against the live stack and says what it decided."""
    import numpy as np

    from recsys.loop.retrain import RetrainOptions
    from recsys.loop.runner import Plan, run_loop
    from recsys.simulate import organic_plays, post_plays

    rng = np.random.default_rng(0)
    plays = organic_plays(world, np.arange(world.n_users), 3, rng)
    posted = asyncio.run(post_plays(stack.nginx_url, world, plays))
    if posted.errors:
        raise ConfigError(f"organic plays saw errors: {dict(posted.errors)}")
    stack.wait_drained()
    out.print(f"{posted.accepted:,} organic plays logged (POST /plays); one cycle of the training loop:")
    window = (datetime.now(UTC) - started) * 0.6  # the newest part of the demo's log judges the candidate
    for cycle in run_loop(
        repository, stack.database_url, stack.triton, workdir, Plan(), options=RetrainOptions(window=window)
    ):
        version = f" -> version {cycle.published_version}" if cycle.published_version else ""
        out.print(f"  {cycle.kind} {cycle.decision}{version} in {cycle.seconds:.1f} s: {cycle.reason}")
