"""``recsys``: the single command line of the project (typer).

Commands only parse options and print: the work is in the packages below (the demo in :mod:`recsys.demo`, the
A/B report's glue in :mod:`recsys.ab_report`, the run tables in :mod:`recsys.tables`). Every error a user can
cause prints one line on stderr and exits with status 2 (:func:`invoke`): bad options (click's usage errors,
ranges declared on the options), deliberate errors (bad data, missing runs, unreachable servers: a
:class:`RecsysError`) and the environment's (an ``OSError``: a missing folder, a full disk); anything else is a
bug and keeps its traceback. ``--json PATH`` writes one JSON document (``-``: stdout, with logs on stderr). The
service images do not use this CLI: they run ``python -m gateway`` and ``python -m feedback``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from recsys.core.errors import ConfigError, RecsysError
from recsys.core.logs import configure_logging
from recsys.core.settings import Settings, get_settings
from recsys.tables import STDOUT, check_output, metrics_table, recommendation_table, show, write_json

if TYPE_CHECKING:
    from trainer.data.interactions import Interactions
    from trainer.data.log import LogData

app = typer.Typer(
    name="recsys",
    help="Real-time music recommendation: train, evaluate and tune models, publish them to Triton, run the "
    "serving stack, simulate listeners and report the A/B test.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
out = Console()
out.soft_wrap = not out.is_terminal  # a file or a pipe gets each message on one line, not cut at 80 columns

DataOpt = Annotated[
    str,
    typer.Option(
        "--data",
        help="'synthetic', a HetRec Last.fm 2K folder, a Last.fm-1K log (.tsv), or a CSV/TSV/Parquet table.",
    ),
]
#: Every model of ``trainer.models.registry`` (a test keeps this list whole).
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="popularity, bpr, als or gru4rec.")]
#: Only the models with a search space in ``trainer.tune`` (a test keeps this list whole).
TuneModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="als or bpr (the models with a search space; the others cannot be tuned).")
]
UserColOpt = Annotated[str | None, typer.Option("--user-col", help="Table column holding user ids.")]
ItemColOpt = Annotated[str | None, typer.Option("--item-col", help="Table column holding item ids.")]
WeightColOpt = Annotated[
    str | None, typer.Option("--weight-col", help="Table column of play counts (default: each row weighs 1).")
]
TimeColOpt = Annotated[
    str | None, typer.Option("--time-col", help="Table column of timestamps (epoch seconds or ISO 8601).")
]
ParamOpt = Annotated[
    list[str] | None,
    typer.Option("--param", "-p", help="Model hyperparameter as NAME=VALUE, repeatable (e.g. -p factors=128)."),
]
JsonOpt = Annotated[
    Path | None, typer.Option("--json", help="Write the result as one JSON document here ('-': stdout, alone).")
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N [RECSYS_DEVICE].")]


def between(
    low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False
) -> Callable[[float | None], float | None]:
    """An option callback that refuses a float outside ``low .. high`` (open ends excluded), NaN and infinity
    included (click's own float ranges let ``nan`` through)."""

    def check(value: float | None) -> float | None:
        if value is None:
            return None
        inside = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not (math.isfinite(value) and inside):
            left, right = "(" if low_open else "[", ")" if high_open or math.isinf(high) else "]"
            raise typer.BadParameter(f"{value} is not a finite number in {left}{low:g}, {high:g}{right}")
        return value

    return check


SeedOpt = Annotated[int | None, typer.Option("--seed", min=0, help="Seed of the split [RECSYS_SEED].")]


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"recsys {version('recsys')}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    ctx.obj = settings


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.obj
    assert isinstance(settings, Settings)
    return settings


def parse_params(model_name: str, pairs: list[str] | None) -> dict[str, Any]:
    """``["factors=128", "solver=cholesky"]`` → typed values, using the model's parameter defaults' types."""
    from trainer.models.registry import model_class

    fields = {f.name: f for f in dataclasses.fields(model_class(model_name).params_type)}
    params: dict[str, Any] = {}
    for pair in pairs or []:
        name, sep, raw = pair.partition("=")
        if not sep:
            raise ConfigError(f"--param {pair!r}: expected NAME=VALUE")
        if name not in fields:
            raise ConfigError(f"--param {name!r}: {model_name} has no such parameter ({', '.join(fields)})")
        default = fields[name].default
        try:
            if isinstance(default, bool):
                params[name] = raw.lower() in ("1", "true", "yes", "on")
            elif isinstance(default, int | float):
                params[name] = type(default)(raw)
            else:
                params[name] = raw
        except ValueError:
            raise ConfigError(f"--param {name}: {raw!r} is not a {type(default).__name__}") from None
    model_class(model_name).params_type.from_dict(params)  # out-of-range values fail here, before the data loads
    return params


def _load(
    data: str, user_col: str | None, item_col: str | None, weight_col: str | None, time_col: str | None, **log: Any
) -> Interactions:
    from recsys.stack.postgres import with_local_password
    from trainer.data.load import load_dataset

    data = with_local_password(data)  # a postgresql:// URL of the local stack without its password
    return load_dataset(data, user_col=user_col, item_col=item_col, weight_col=weight_col, time_col=time_col, **log)


@app.command()
def train(
    ctx: typer.Context,
    data: DataOpt = "synthetic",
    model: ModelOpt = "als",
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run directory [RECSYS_RUNS_DIR/MODEL].")] = None,
    split: Annotated[str, typer.Option(help="random-holdout or temporal.")] = "random-holdout",
    param: ParamOpt = None,
    user_col: UserColOpt = None,
    item_col: ItemColOpt = None,
    weight_col: WeightColOpt = None,
    time_col: TimeColOpt = None,
    device: DeviceOpt = None,
    seed: SeedOpt = None,
    refit: Annotated[bool, typer.Option(help="After evaluating, fit again on all data for serving.")] = False,
    since: Annotated[datetime | None, typer.Option(help="The feedback log from this time (UTC) on.")] = None,
    until: Annotated[datetime | None, typer.Option(help="The feedback log until this time (UTC).")] = None,
    decay_days: Annotated[
        float | None,
        typer.Option(
            callback=between(0, low_open=True),
            help="Half-life of the log's weights in days (a play this old counts half).",
        ),
    ] = None,
    base: Annotated[
        Path | None, typer.Option(help="Merge the history of this run directory with the log (warm data).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the run directory if it holds a run.")] = False,
    json_out: JsonOpt = None,
) -> None:
    """Train one model, evaluate it on a held-out split, and write the run (model, ids, history, metrics.json).

    ``--data postgresql://...`` (or a folder written by ``recsys feedback export``) trains on the feedback log:
    plays and clicks as positives (skips kept as negatives for evaluation), ``--since``/``--until``,
    ``--decay-days`` and ``--base`` apply to it only."""
    from trainer.pipeline import save_result, train_and_evaluate

    settings = _settings(ctx)
    params = parse_params(model, param)
    target = out_dir or settings.runs_dir / model
    if not force and target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(
            f"{target}: a run (or other files) is already there; --force overwrites it, --out DIR goes elsewhere"
        )
    check_output(json_out, "--json")
    log_options: dict[str, Any] = {"since": _utc(since), "until": _utc(until), "decay_days": decay_days, "base": base}
    read_at = datetime.now(UTC)
    log = _log_of(data, log_options)
    if log is None:
        interactions = _load(data, user_col, item_col, weight_col, time_col, **log_options)
    else:
        interactions = log.interactions
    result = train_and_evaluate(
        interactions,
        model,
        params,
        split=split,
        seed=settings.seed if seed is None else seed,
        device=device or settings.device,
        refit=refit,
        show_progress=settings.progress,
        source=data,
    )
    if log is not None:
        from trainer.data.log import skip_metrics

        # Skips are the log's negatives: how often the model still ranks what listeners skipped. The data's end
        # is where the next retrain's read of the log starts (never twice).
        result.metrics["skips"] = skip_metrics(result.model, log.skips, result.split.train)
        result.metrics["log"] = log.summary | {"until": (_utc(until) or read_at).isoformat()}
    save_result(result, target)
    if json_out is not None:
        write_json(out, json_out, {"run_dir": str(target), "metrics": result.metrics})
    human = _human(json_out)
    rows = {"popularity (baseline)": result.metrics["baseline_popularity"], model: result.metrics}
    if json_out != STDOUT:
        show(human, metrics_table(rows, f"{data} · {split}"))
    human.print(f"run written to {target}")


@app.command()
def tune(
    ctx: typer.Context,
    data: DataOpt = "synthetic",
    model: TuneModelOpt = "als",
    trials: Annotated[int, typer.Option(min=1, help="Number of Optuna trials.")] = 30,
    metric: Annotated[
        str,
        typer.Option(help="Validation metric to maximise: ndcg, recall, map, coverage or mean_popularity, @10 or @20."),
    ] = "ndcg@10",
    param: ParamOpt = None,
    user_col: UserColOpt = None,
    item_col: ItemColOpt = None,
    weight_col: WeightColOpt = None,
    time_col: TimeColOpt = None,
    device: DeviceOpt = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write the best parameters as JSON here.")] = None,
) -> None:
    """Search hyperparameters on a validation split carved from the training part (the test part stays unseen)."""
    from trainer.splits import random_holdout
    from trainer.tune import tune as run_tune

    settings = _settings(ctx)
    fixed = parse_params(model, param)
    check_output(out_file, "--out")
    interactions = _load(data, user_col, item_col, weight_col, time_col)
    split = random_holdout(interactions, seed=settings.seed)
    result = run_tune(
        split.train,
        model,
        n_trials=trials,
        metric=metric,
        device=device or settings.device,
        fixed=fixed,
        show_progress=settings.progress,
    )
    out.print(f"best validation {metric} = {result.best_value:.4f}")
    out.print_json(json.dumps(result.best_params))
    if out_file is not None:
        payload = {"model": model, "metric": metric, **dataclasses.asdict(result)}
        out_file.write_text(json.dumps(payload, indent=2) + "\n")
        out.print(f"written to {out_file}")
    hint = " ".join(f"-p {k}={v}" for k, v in result.best_params.items())
    out.print(f"train with: recsys train --data {data} --model {model} {hint}", soft_wrap=True, highlight=False)


@app.command()
def recommend(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `recsys train`.")],
    user: Annotated[list[str], typer.Option("--user", "-u", help="External user id, repeatable.")],
    k: Annotated[int, typer.Option("-k", min=1, help="How many items.")] = 10,
    json_out: JsonOpt = None,
) -> None:
    """Top-k items for users of a trained run (items they already have are left out)."""
    from trainer.artifacts import load_run

    check_output(json_out, "--json")
    run = load_run(run_dir)
    answers = []
    for external in user:
        index = run.user_ids.index(external)
        if index is None:
            raise ConfigError(f"user {external!r} is not in {run_dir} (unknown users are served by the fallback)")
        items, scores = run.model.recommend([index], k, exclude=run.history)
        answers.append((external, items[0], scores[0]))
    if json_out is not None:
        write_json(out, json_out, {"run_dir": str(run_dir), "model": run.model.name, "users": [
            {"user_id": external, "items": [
                {"rank": rank, "item_id": str(run.item_ids.ids[item]), "item": run.item_label(int(item)),
                 "score": float(score)}
                for rank, (item, score) in enumerate(zip(items, scores, strict=True), start=1) if item >= 0
            ]}
            for external, items, scores in answers
        ]})  # fmt: skip
    if json_out != STDOUT:
        for external, items, scores in answers:
            show(out, recommendation_table(run, external, items, scores))


@app.command()
def demo(
    ctx: typer.Context,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Where the demo's runs, model repository, stack and A/B report go.")
    ] = Path("runs/demo"),
    users: Annotated[int, typer.Option(min=0, help="Show recommendations for this many users.")] = 3,
    serve: Annotated[
        bool, typer.Option(help="Publish ALS, start the local stack, answer through it and run a simulated A/B test.")
    ] = True,
    listeners: Annotated[int, typer.Option(min=1, help="Simulated listeners of the demo's A/B test.")] = 400,
) -> None:
    """The main job on the embedded synthetic data: train popularity, BPR and ALS, compare, recommend, serve."""
    from recsys.demo import run_demo

    run_demo(out, _settings(ctx), out_dir, users=users, serve=serve, listeners=listeners)


RepositoryOpt = Annotated[
    Path | None, typer.Option("--repository", help="Triton model repository [RECSYS_MODEL_REPOSITORY].")
]


@app.command()
def publish(
    ctx: typer.Context,
    run_dir: Annotated[
        Path, typer.Argument(help="A run directory written by `recsys train` (bpr or als: A/B; gru4rec: C).")
    ],
    repository: RepositoryOpt = None,
    load: Annotated[bool, typer.Option(help="Hot-swap a running Triton (explicit model control) to it.")] = False,
    triton_http: Annotated[
        str | None, typer.Option(help="host:port of the running Triton's HTTP endpoint (with --load).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Publish even a run worse than its own popularity baseline.")
    ] = False,
    ann: Annotated[
        str | None,
        typer.Option(
            help="Approximate scorer (recsys_ann): inherit keeps the policy of the newest version (auto for the "
            "first); auto builds an hnsw index from RECSYS_ANN_THRESHOLD_ITEMS items on and none below; none never; "
            "flat, ivf_flat or hnsw that index whatever the size [RECSYS_ANN_KIND, inherit]."
        ),
    ] = None,
    ann_min_recall: Annotated[
        float | None,
        typer.Option(
            help="Refuse the index below this recall@10 vs exact [RECSYS_ANN_MIN_RECALL, 0.95].", min=0.0, max=1.0
        ),
    ] = None,
) -> None:
    """Export (TorchScript + ONNX), check parity, and write a new numbered version of the run's family into the
    model repository: the factor ensembles (recsys_a, recsys_b, recsys_popular) for BPR/ALS, recsys_c for GRU4Rec."""
    from recsys.stack.triton import TritonControl
    from trainer.ann import AnnPolicy
    from trainer.triton.publish import check_beats_popularity
    from trainer.triton.publish import publish as run_publish
    from trainer.triton.repository import activate, manifest, versions

    settings = _settings(ctx)
    policy = AnnPolicy.from_settings(settings, kind=ann, min_recall=ann_min_recall)  # refused before the run is read
    if not force:
        check_beats_popularity(run_dir)
    target = repository or settings.model_repository
    http = triton_http or f"{settings.triton_host}:{settings.triton_http_port}"
    stack_repository = _stack_triton_repository(settings, http, target) if load else None
    published = run_publish(run_dir, target, ann=policy)
    diffs = ", ".join(f"{k} {v:.1e}" for k, v in published.parity.max_abs_score_diff.items())
    checked = published.parity.users_checked
    out.print(
        f"published version {published.version} of the {published.family.name} models "
        f"({', '.join(published.ensembles)}) into {target} (parity on {checked} rows: {diffs})"
    )
    record = manifest(target, published.family, published.version)
    index = record.get("ann")
    if index:
        out.print(
            f"approximate scorer (recsys_ann): {index['kind']} index, recall@10 {index['recall_at_10']:.4f} against "
            f"exact on {index['users_checked']} users (gate {index['min_recall']})"
        )
    elif "ann_policy" in record:  # a factor version without an index
        asked = record["ann_policy"]
        why = (
            f"{record.get('n_items')} items, below RECSYS_ANN_THRESHOLD_ITEMS {policy.threshold_items}"
            if asked == "auto"
            else f"index policy {asked!r}"
        )
        out.print(f"no approximate scorer ({why}): recsys_ann is not served by this version (--ann flat builds one)")
        earlier = [v for v in versions(target, published.family) if v < published.version]
        had = manifest(target, published.family, earlier[-1]).get("ann") if earlier else None
        if had:
            out.print(
                f"warning: version {earlier[-1]} has an approximate index ({had.get('kind')}), version "
                f"{published.version} has none: a group routed to recsys_ann fails once this version is loaded "
                f"(publish with --ann {had.get('kind')} to keep it)"
            )
    if load:
        control = TritonControl.at(http, api_key=_triton_key(settings))
        activate(control, target, published.family, published.version)
        what = f"version {published.version} of {', '.join(published.ensembles)}"
        if not all(control.is_model_ready(step, str(published.version)) for step in published.steps):
            raise ConfigError(f"Triton at {http} did not report {what} ready after loading it")
        if stack_repository is not None:
            out.print(f"Triton at {http} (the local stack's, serving {target}) now serves {what}")
        else:
            out.print(
                f"Triton at {http} loaded {what} and reports it ready (not checked: that it serves {target}; "
                "it is not the local stack's Triton)"
            )


def _triton_key(settings: Settings) -> str | None:
    """The key of the Triton the CLI controls: RECSYS_TRITON_API_KEY, else the local stack's (its work folder's
    key file, readable by the user who started the stack), else none (an unrestricted server)."""
    from recsys.stack.triton import KEY_FILE

    key = settings.triton_api_key.get_secret_value()
    path = settings.stack_dir / KEY_FILE
    if key or not path.is_file():
        return key or None
    try:
        return path.read_text().strip() or None
    except OSError as exc:
        raise ConfigError(f"cannot read the local stack's Triton key {path}: {exc.strerror}") from None


def _stack_triton_repository(settings: Settings, http: str, target: Path) -> Path | None:
    """The local stack's repository if its Triton is the one at ``http`` (None if it is not the stack's); a
    one-line error, before anything is published, when that Triton serves another repository than ``target``."""
    from recsys.stack.state import STATE_FILE, triton_repository

    served = triton_repository(settings.stack_dir.resolve() / STATE_FILE, http)
    if served is not None and served != target.resolve():
        raise ConfigError(
            f"Triton at {http} is the local stack's and serves {served}, not {target}: publish there "
            f"(--repository {served}) or start the stack on {target}; nothing was published"
        )
    return served


@app.command("render-repo")
def render_repo(
    out_dir: Annotated[Path, typer.Option("--out", help="Where to write the repository's config.pbtxt files.")],
    flavour: Annotated[
        str, typer.Option(help="local (python backend everywhere), native (NGC image) or gpu (scorers on the GPU).")
    ] = "local",
) -> None:
    """Write every model's config.pbtxt from the families' single description (local, native or gpu flavour)."""
    from trainer.triton.repository import render_repository

    for path in render_repository(out_dir, flavour):
        out.print(str(path))


serve_app = typer.Typer(help="Run parts of the serving stack locally.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")


@serve_app.command("triton")
def serve_triton(
    ctx: typer.Context,
    repository: RepositoryOpt = None,
    http_port: Annotated[
        int | None, typer.Option(help="HTTP/REST port: health, model control [RECSYS_TRITON_HTTP_PORT, 8000].")
    ] = None,
    grpc_port: Annotated[int | None, typer.Option(help="gRPC inference port [RECSYS_TRITON_GRPC_PORT, 8001].")] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Prometheus metrics port [RECSYS_TRITON_METRICS_PORT, 8002].")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="No API key: any local user may load models (code) into Triton.")
    ] = False,
) -> None:
    """Start the real Triton on 127.0.0.1 (explicit model control), load every published model, wait for Ctrl-C.

    Every API but health needs a key: RECSYS_TRITON_API_KEY, else the local stack's key file (made if missing),
    which `recsys serve gateway`, `publish --load`, `retrain` and `promote` read too."""
    from recsys.stack.credentials import stack_secret
    from recsys.stack.status import not_served
    from recsys.stack.triton import KEY_FILE, TritonConfig, TritonPorts, TritonServer, TritonServerError
    from trainer.triton.repository import load_all, published_families

    settings = _settings(ctx)
    target = repository or settings.model_repository
    if not published_families(target):
        raise ConfigError(f"{target}: no published version yet (run `recsys publish RUN_DIR` first)")
    ports = TritonPorts(
        http=http_port if http_port is not None else settings.triton_http_port,
        grpc=grpc_port if grpc_port is not None else settings.triton_grpc_port,
        metrics=metrics_port if metrics_port is not None else settings.triton_metrics_port,
    )
    key_file = settings.stack_dir / KEY_FILE
    key = None if insecure else settings.triton_api_key.get_secret_value() or stack_secret(key_file)
    config = TritonConfig(model_repository=target, ports=ports, host=settings.triton_host, api_key=key)
    _check_ports(
        {"Triton HTTP (--http-port, RECSYS_TRITON_HTTP_PORT)": ports.http,
         "Triton gRPC (--grpc-port, RECSYS_TRITON_GRPC_PORT)": ports.grpc,
         "Triton metrics (--metrics-port, RECSYS_TRITON_METRICS_PORT)": ports.metrics},
        settings.triton_host,
    )  # fmt: skip
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    with TritonServer(config) as server:
        loaded = load_all(server, target)
        out.print(f"Triton ready: grpc {server.urls.grpc}, http {server.urls.http}, metrics {server.urls.metrics}")
        if key is None:
            Console(stderr=True, soft_wrap=True).print(
                "warning: --insecure: Triton's APIs are open to every local user (model control included)"
            )
        elif not settings.triton_api_key.get_secret_value():
            out.print(f"its APIs (all but health) need the key in {key_file} (or RECSYS_TRITON_API_KEY)")
        served = ", ".join(f"version {version} of the {name} models" for name, version in loaded.items())
        out.print(f"serving {served} from {target}; Ctrl-C stops it")
        for name, why in not_served(target, loaded).items():
            out.print(f"not served: {name} ({why})")
        with contextlib.suppress(KeyboardInterrupt):
            while server.is_running() and not stopping.wait(0.5):
                pass
        if not stopping.is_set() and not server.is_running():
            raise TritonServerError(f"tritonserver exited on its own; last lines of its log:\n{server.log_tail()}")


@serve_app.command("gateway")
def serve_gateway(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option(help="REST port [RECSYS_GATEWAY_PORT, 8080].")] = None,
    grpc_port: Annotated[int | None, typer.Option(help="gRPC port [RECSYS_GATEWAY_GRPC_PORT, 50051].")] = None,
    triton: Annotated[
        str | None, typer.Option(help="Triton gRPC host:port [RECSYS_TRITON_URL, 127.0.0.1:8001].")
    ] = None,
) -> None:
    """Start the gateway (REST + gRPC) in front of a running Triton; Ctrl-C or SIGTERM stops it."""
    from pydantic import SecretStr

    from gateway.main import run as run_gateway

    updates: dict[str, Any] = {"gateway_port": port, "gateway_grpc_port": grpc_port, "triton_url": triton}
    settings = _settings(ctx).model_copy(update={k: v for k, v in updates.items() if v is not None})
    if not settings.triton_api_key.get_secret_value() and (key := _triton_key(settings)):
        settings = settings.model_copy(update={"triton_api_key": SecretStr(key)})  # the local stack's key file
    _check_ports(
        {"the gateway REST (--port, RECSYS_GATEWAY_PORT)": settings.gateway_port,
         "the gateway gRPC (--grpc-port, RECSYS_GATEWAY_GRPC_PORT)": settings.gateway_grpc_port},
        settings.gateway_host,
    )  # fmt: skip
    run_gateway(settings)


@serve_app.command("feedback")
def serve_feedback(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option(help="HTTP port [RECSYS_FEEDBACK_PORT, 8090].")] = None,
    spool_dir: Annotated[Path | None, typer.Option(help="Durable spool folder [RECSYS_SPOOL_DIR].")] = None,
) -> None:
    """Start the feedback writer (events -> fsync'd spool -> PostgreSQL at RECSYS_DATABASE_URL)."""
    from feedback.main import run as run_writer

    updates: dict[str, Any] = {"feedback_port": port, "spool_dir": spool_dir}
    settings = _settings(ctx).model_copy(update={k: v for k, v in updates.items() if v is not None})
    _check_ports({"the feedback writer (--port, RECSYS_FEEDBACK_PORT)": settings.feedback_port}, settings.feedback_host)
    run_writer(settings)


def _check_ports(ports: dict[str, int], host: str) -> None:
    """One-line error before a server starts when one of its ports is taken (0: picked free at start)."""
    from recsys.stack.ports import check_ports_free

    check_ports_free({name: port for name, port in ports.items() if port != 0}, host)


@app.command()
def simulate(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(help="NGINX (or a gateway) of a running stack.")] = "http://127.0.0.1:8088",
    listeners: Annotated[int, typer.Option(min=1, help="Distinct simulated listeners.")] = 400,
    requests: Annotated[int, typer.Option(min=1, help="Recommendation requests per listener.")] = 5,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight.")] = 8,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the listeners' choices.")] = 0,
) -> None:
    """Drive a running stack with synthetic listeners of the demo's world; they click or skip by their true tastes
    (the world must be the one the served model was trained on: `recsys demo` trains on the default one)."""
    import asyncio

    from recsys.simulate import simulate as run_simulation
    from recsys.stack.process import ServiceError
    from trainer.data.synthetic import SyntheticConfig, generate
    from trainer.progress import progress_bar

    world = generate(SyntheticConfig())
    if listeners > world.n_users:
        out.print(f"the world has {world.n_users} listeners: simulating all of them")
        listeners = world.n_users
    total = listeners * requests
    with progress_bar("simulate", total, enabled=_settings(ctx).progress) as advance:
        summary = asyncio.run(
            run_simulation(url, world, listeners=listeners, requests_per_listener=requests, concurrency=concurrency,
                           seed=seed, on_request=advance)
        )  # fmt: skip
    for group in sorted(summary.impressions):
        out.print(f"group {group}: {summary.impressions[group]} lists, {summary.clicks[group]} clicks, "
                  f"CTR {summary.ctr(group):.3f}")  # fmt: skip
    if summary.errors:
        errors = ", ".join(f"{kind} x{count}" for kind, count in summary.errors.most_common())
        raise ServiceError(f"{sum(summary.errors.values())} of {summary.requests} listener turns failed: {errors}")


stack_app = typer.Typer(
    help="The local stack: PostgreSQL, Triton, writer, gateway(s), NGINX (and Prometheus): up, status, down.",
    no_args_is_help=True,
)
app.add_typer(stack_app, name="stack")


@stack_app.command("up")
def stack_up(
    ctx: typer.Context,
    repository: RepositoryOpt = None,
    experiment: Annotated[
        Path | None, typer.Option(help="Experiment config [RECSYS_EXPERIMENT_FILE, gateway/experiment.yaml].")
    ] = None,
    gateways: Annotated[int, typer.Option(min=1, help="Gateways behind NGINX.")] = 1,
    prometheus: Annotated[
        bool, typer.Option(help="Also run Prometheus [RECSYS_PROMETHEUS_PORT, 9090], scraping every server.")
    ] = False,
) -> None:
    """Start every server on the ports of the settings (NGINX RECSYS_NGINX_PORT 8088, gateway 8080/50051, writer
    8090, PostgreSQL: the port of RECSYS_DATABASE_URL 5433, Triton 8000-8002; gateway n > 1 on +100 (n-1) / +(n-1)),
    serving the newest published version; every port is checked before anything starts. Records what runs in
    RECSYS_STACK_DIR/state.json (`recsys stack status`, `recsys stack down`); Ctrl-C or SIGTERM stops it all."""
    from recsys.stack.local import LocalStack, StackConfig, StackPorts
    from trainer.ann import AnnPolicy

    settings = _settings(ctx)
    config = StackConfig(
        model_repository=repository or settings.model_repository,
        workdir=settings.stack_dir,
        ports=StackPorts.from_settings(settings),
        experiment_file=experiment or settings.experiment_file,
        postgres_dir=settings.postgres_dir,
        gateways=gateways,
        prometheus=prometheus,
        ann=AnnPolicy.from_settings(settings),
    )
    stack = LocalStack(config)
    stopping, up = threading.Event(), threading.Event()

    def on_sigterm(signum: int, frame: object) -> None:
        stopping.set()
        if not up.is_set():  # still starting: stop what started (LocalStack.start does on any exception)
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        stack.start()
    except KeyboardInterrupt:
        raise ConfigError("stopped while starting (Ctrl-C or SIGTERM); nothing is left running") from None
    up.set()
    try:
        extra = f", Prometheus {stack.prometheus_site.url}" if prometheus else ""
        out.print(f"stack up: NGINX {stack.nginx_url}, gateway {stack.gateway_url} (gRPC {stack.gateway_grpc}), "
                  f"writer {stack.feedback_url}, PostgreSQL {stack.postgres.display_url}, Triton http 127.0.0.1:"
                  f"{config.ports.triton_http}{extra}; serving {_versions(stack.versions)}; state "
                  f"{stack.state_path}; Ctrl-C or `recsys stack down` stops it")  # fmt: skip
        with contextlib.suppress(KeyboardInterrupt):
            while not stopping.wait(0.5):
                pass
    finally:
        stack.stop()
    out.print("stack stopped")


def _versions(versions: dict[str, int]) -> str:
    return ", ".join(f"{family} version {version}" for family, version in versions.items()) or "nothing"


@stack_app.command("status")
def stack_status(ctx: typer.Context, json_out: JsonOpt = None) -> None:
    """What the running stack (RECSYS_STACK_DIR/state.json) runs and whether each server passes its health check.
    Exit status 0: up and healthy; 1: up but something is not; 3: no stack is up."""
    from rich.table import Table

    from recsys.stack.state import STATE_FILE
    from recsys.stack.status import stack_status as read_status

    check_output(json_out, "--json")
    path = _settings(ctx).stack_dir.resolve() / STATE_FILE
    status = read_status(path)
    human = _human(json_out)
    if status is None:
        if json_out is not None:
            write_json(out, json_out, {"state_file": str(path), "up": False, "healthy": False})
        human.print(f"no stack is up (no state file {path})")
        raise typer.Exit(3)
    if json_out is not None:
        write_json(out, json_out, status.as_dict() | {"up": True})
    if json_out != STDOUT:
        supervisor = "alive" if status.supervisor_alive else "GONE"
        out.print(
            f"stack {status.phase} since {status.started_at} (supervisor pid {status.supervisor_pid}: {supervisor}), "
            f"repository {status.repository}, loaded at start: {_versions(status.versions)}"
        )
        if status.triton_models is not None:
            out.print("Triton READY: " + (", ".join(f"{m} {'/'.join(v)}" for m, v in status.triton_models.items())
                                          or "no model"))  # fmt: skip
        for name, why in status.not_served.items():
            out.print(f"not served: {name} ({why})")
        table = Table("service", "pid", "alive", "processes", "ports", "health")
        for s in status.services:
            ports = " ".join(f"{k} {v}" for k, v in s.ports.items())
            alive, health = "yes" if s.alive else "NO", "ok" if s.healthy else f"FAIL: {s.detail}"
            table.add_row(s.name, str(s.pid), alive, str(s.processes), ports, health)
        show(out, table)
    raise typer.Exit(0 if status.healthy else 1)


@stack_app.command("down")
def stack_down(ctx: typer.Context) -> None:
    """Stop exactly the processes of the running stack's state file (each pid checked by its start time), also
    after its supervisor died; the supervisor, when alive, stops them itself (PostgreSQL last)."""
    from recsys.stack.down import stop_stack
    from recsys.stack.state import STATE_FILE

    path = _settings(ctx).stack_dir.resolve() / STATE_FILE
    report = stop_stack(path)
    if report is None:
        out.print(f"no stack is up (no state file {path})")
        return
    out.print(report.summary())


@app.command("ab-report")
def ab_report(
    ctx: typer.Context,
    since: Annotated[
        datetime | None, typer.Option(help="Start of the window (UTC) [default: 30 days before --until].")
    ] = None,
    until: Annotated[datetime | None, typer.Option(help="End of the window (UTC) [default: now].")] = None,
    control: Annotated[str, typer.Option(help="The control group every other group is compared with.")] = "A",
    alpha: Annotated[
        float,
        typer.Option(callback=between(0, 1, low_open=True, high_open=True), help="1 - confidence of the intervals."),
    ] = 0.05,
    planned_users: Annotated[
        int,
        typer.Option(
            min=1, help="Users the experiment plans to reach (tunes the always-valid interval; fix it first)."
        ),
    ] = 10_000,
    json_out: JsonOpt = None,
    plot: Annotated[Path | None, typer.Option(help="Also draw CTR over time with intervals into this PNG.")] = None,
    bucket: Annotated[
        str, typer.Option(help="Time bucket of the series over time (JSON, PNG): minute, hour or day (UTC).")
    ] = "day",
) -> None:
    """A/B report from PostgreSQL [RECSYS_DATABASE_URL]: per group CTR, skips, latency; differences with
    intervals and p-values; sample-ratio-mismatch check against the experiment's shares [RECSYS_EXPERIMENT_FILE];
    always-valid (sequential) interval."""
    from gateway.main import experiment_of
    from recsys.ab_report import print_ab_report, report_window

    settings = _settings(ctx)
    start, end = report_window(since, until, datetime.now(UTC))
    print_ab_report(
        out, _database_url(settings), experiment_of(settings), start, end,
        control=control, alpha=alpha, planned_users=planned_users, json_out=json_out, plot=plot, bucket=bucket,
    )  # fmt: skip


def _human(json_out: Path | None) -> Console:
    """Where messages for people go: stdout, unless the JSON document goes there (``--json -``)."""
    return Console(stderr=True, soft_wrap=not out.is_terminal) if json_out == STDOUT else out


def _log_of(data: str, options: dict[str, Any]) -> LogData | None:
    """The feedback log with its skips when ``data`` is one (a postgresql:// URL or an export folder), else None."""
    from recsys.stack.postgres import with_local_password
    from trainer.data.log import is_log_folder, is_postgres_url, load_log

    data = with_local_password(data)
    if is_postgres_url(data) or (Path(data).is_dir() and is_log_folder(Path(data))):
        return load_log(data, **options)
    return None


def _database_url(settings: Settings) -> str:
    """RECSYS_DATABASE_URL; naming the local stack's PostgreSQL without a password, with the password the stack
    generated (its file is readable by the user who started the stack only)."""
    from recsys.stack.postgres import with_local_password

    return with_local_password(settings.database_url.get_secret_value(), settings.postgres_dir)


def _utc(moment: datetime | None) -> datetime | None:
    """Times on the command line are UTC unless they say otherwise."""
    return None if moment is None or moment.tzinfo else moment.replace(tzinfo=UTC)


@app.command()
def retrain(
    ctx: typer.Context,
    repository: RepositoryOpt = None,
    every: Annotated[
        str | None, typer.Option(help="Keep cycling: retrain every DURATION (30s, 15m, 1h); default: one cycle.")
    ] = None,
    items_every: Annotated[
        str | None, typer.Option(help="Between retrains, add new releases every DURATION (default: with each).")
    ] = None,
    items_only: Annotated[bool, typer.Option(help="Only add new releases (no retrain).")] = False,
    window: Annotated[
        float | None,
        typer.Option(
            callback=between(0, low_open=True),
            help="Minutes of newest log held out for the gate [RECSYS_RETRAIN_WINDOW_MINUTES].",
        ),
    ] = None,
    tolerance: Annotated[
        float | None,
        typer.Option(
            callback=between(0, 1, high_open=True),
            help="Relative NDCG@10 a candidate may lose [RECSYS_RETRAIN_TOLERANCE].",
        ),
    ] = None,
    decay_days: Annotated[
        float | None, typer.Option(callback=between(0, low_open=True), help="Half-life of the log's weights in days.")
    ] = None,
    triton_http: Annotated[
        str | None, typer.Option(help="host:port of the running Triton's HTTP endpoint (model control).")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Serve the loop's Prometheus metrics on this port.")
    ] = None,
    metrics_addr: Annotated[
        str, typer.Option(help="Address of the metrics port (0.0.0.0 in a container or pod).")
    ] = "127.0.0.1",
    json_out: Annotated[bool, typer.Option("--json", help="Print each cycle as one JSON line.")] = False,
    canary: Annotated[
        float | None,
        typer.Option(
            callback=between(0, 100, low_open=True, high_open=True),
            help="Serve a candidate that passes the gate to the experiment's `canary` group (SHARE percent of "
            "listeners) and promote it once the always-valid interval excludes a loss.",
        ),
    ] = None,
    control: Annotated[str, typer.Option(help="The group a canary is compared with.")] = "A",
    planned_users: Annotated[int, typer.Option(min=1, help="Users a canary comparison plans to reach.")] = 10_000,
) -> None:
    """The training loop: new releases (the closed-form item step + a fast publish) and a gated warm retrain
    (log -> warm start -> gate on the newest window -> publish -> hot swap) of the served factor model, each cycle
    recorded in PostgreSQL (retrain_cycles); a refused or failed cycle leaves the served version alone."""
    from recsys.loop.retrain import RetrainOptions
    from recsys.loop.runner import LoopMetrics, Plan, parse_duration, run_loop
    from recsys.stack.triton import TritonControl
    from trainer.ann import AnnPolicy
    from trainer.new_items import CatalogueRules

    settings = _settings(ctx)
    plan = Plan(
        every=None if every is None else parse_duration(every),
        items_every=None if items_every is None else parse_duration(items_every),
        items_only=items_only,
    )
    options = RetrainOptions(
        window=timedelta(minutes=settings.retrain_window_minutes if window is None else window),
        tolerance=settings.retrain_tolerance if tolerance is None else tolerance,
        min_users=settings.retrain_min_users,
        decay_days=decay_days,
        ann=AnnPolicy.from_settings(settings),  # every publish of the loop builds and gates by RECSYS_ANN_*
    )
    rules = CatalogueRules(settings.catalogue_min_listeners, settings.catalogue_max_plays)
    options = dataclasses.replace(options, rules=rules)
    metrics = None
    if metrics_port is not None:
        metrics = LoopMetrics()
        metrics.serve(metrics_port, metrics_addr)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())

    def show(cycle: Any) -> None:
        if json_out:
            print(json.dumps(cycle.as_dict()), flush=True)
        else:
            version = f" -> version {cycle.published_version}" if cycle.published_version else ""
            out.print(f"{cycle.kind} {cycle.decision}{version} in {cycle.seconds:.1f} s: {cycle.reason}")

    http = triton_http or f"{settings.triton_host}:{settings.triton_http_port}"
    canary_plan = None
    if canary is not None:
        from gateway.main import experiment_of
        from recsys.loop.canary import CanaryPlan, check_experiment

        experiment = experiment_of(settings)
        check_experiment({g.name: (g.model, float(g.share)) for g in experiment.groups}, canary)
        canary_plan = CanaryPlan(control=control, planned_users=planned_users)
    with contextlib.suppress(KeyboardInterrupt):
        run_loop(
            repository or settings.model_repository, _database_url(settings),
            TritonControl.at(http, api_key=_triton_key(settings)), settings.loop_dir, plan,
            options=options, rules=rules, stop=stopping, on_cycle=show, metrics=metrics, canary=canary_plan,
        )  # fmt: skip


@app.command()
def promote(
    ctx: typer.Context,
    repository: RepositoryOpt = None,
    triton_http: Annotated[
        str | None, typer.Option(help="host:port of the running Triton's HTTP endpoint (model control).")
    ] = None,
) -> None:
    """Promote the canary's candidate to every listener now (the next version of the served models)."""
    from recsys.loop.canary import busy
    from recsys.loop.canary import promote as run_promote
    from recsys.stack.triton import TritonControl
    from trainer.ann import AnnPolicy

    settings = _settings(ctx)
    target = repository or settings.model_repository
    if not busy(target):
        raise ConfigError(f"{target}: no candidate on the canary to promote")
    http = triton_http or f"{settings.triton_host}:{settings.triton_http_port}"
    control = TritonControl.at(http, api_key=_triton_key(settings))
    version = run_promote(target, control, ann=AnnPolicy.from_settings(settings))
    out.print(f"the canary's run now serves everyone as version {version}")


feedback_app = typer.Typer(help="The feedback log: export it for training and archives.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")


@feedback_app.command("export")
def feedback_export(
    ctx: typer.Context,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder of the day-partitioned Parquet (S3 on EKS).")],
    since: Annotated[datetime, typer.Option(help="First day (UTC) to export.")],
    until: Annotated[datetime | None, typer.Option(help="Day (UTC) after the last one [default: tomorrow].")] = None,
) -> None:
    """Write plays, feedback and impressions of the days [since, until) as day-partitioned Parquet
    (DIR/<table>/day=YYYY-MM-DD/); rerunning a day replaces it. `recsys train --data DIR` reads it back."""
    from feedback.log_export import export_log

    settings = _settings(ctx)
    last = until.date() if until else (datetime.now(UTC) + timedelta(days=1)).date()
    summary = export_log(_database_url(settings), since.date(), last, out_dir)
    for table, days in summary.rows.items():
        out.print(f"{table}: {sum(days.values()):,} rows over {len(days)} day(s)")
    if summary.missing_tables:
        out.print(f"not in the database: {', '.join(summary.missing_tables)}")
    out.print(f"{summary.total:,} rows written under {summary.out}")


def invoke(args: Sequence[str] | None = None) -> int:
    """Runs the command line on ``args`` (default: ``sys.argv``) and returns its exit status; every error a user
    can cause is one line on stderr (``error: ...``) and status 2, never a traceback or a panel."""
    try:
        status = app(args=args, prog_name="recsys", standalone_mode=False)
    except typer.TyperException as exc:  # click's usage errors (typer bundles click: its classes, not click's)
        if type(exc).__name__ == "NoArgsIsHelpError":
            return 2  # a bare `recsys` or command group: typer has printed its help
        context = getattr(exc, "ctx", None)
        if context is None:
            return _fail(exc.format_message())
        command = context.command_path
        return _fail(f"{command}: {exc.format_message()} (see `{command} --help`)")
    except typer.Abort:
        return _fail("aborted")
    except RecsysError as exc:
        return _fail(str(exc))
    except OSError as exc:
        if exc.errno == errno.EPIPE:  # the reader of a pipe went away (`recsys ... | head`): not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's last flush goes nowhere
            return 1
        return _fail(str(exc))
    return status if isinstance(status, int) else 0


def _fail(message: str) -> int:
    """One line on stderr, whatever the message holds (a log tail's lines are joined with `` | ``)."""
    line = " | ".join(part.strip() for part in message.splitlines() if part.strip())
    Console(stderr=True, soft_wrap=True, highlight=False).print(Text.assemble(("error:", "bold red"), " ", line))
    return 2


def run() -> NoReturn:
    """Console entry point (``recsys``, ``python -m recsys``)."""
    sys.exit(invoke())
