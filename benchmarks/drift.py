"""The loop on a world that changes: static model vs live fold-in only vs the full loop, in one run of the real stack.

    python -m benchmarks.drift                 # the recorded run (about 12 minutes on 2 cores)
    python -m benchmarks.drift --quick         # a smaller world and fewer cycles (a smoke run)

One synthetic world (``trainer.data.synthetic``), one base ALS run, served by the whole local stack (PostgreSQL,
Triton, the writer, a gateway, NGINX) as three experiment groups that NGINX splits listeners into:

* ``static``: the base version, never updated, no live fold-in (``recsys_b_static``);
* ``fold_in``: the base version with the live fold-in of clicks and plays (``recsys_b_foldin``);
* ``loop``: the full loop (``recsys_b``): live fold-in, new releases by ``recsys.loop.items`` every cycle and a
  gated warm retrain by ``recsys.loop.retrain`` every ``--retrain-every`` cycles.

Each cycle, simulated listeners (``recsys.simulate``) ask for recommendations through NGINX and click or skip by
their true tastes (the CTR per arm is measured there), then play music in their own player (``POST /plays``).
After ``--drift-at`` cycles the world moves: a share of listeners' tastes go to another genre, and new items are
released (held back from the base run's data, they get organic plays from listeners who like their genre).

Written: ``benchmarks/results/drift.{md,json,png}``. The JSON holds ``ctr_final`` and ``ctr_pre_drift`` by arm,
``new_item_seconds_p50``/``p90`` (from the acknowledgement of the play that made a release qualify to the first
recommendation of it seen in the loop arm), ``failed_requests`` (every non-2xx answer of the run, swaps
included), and the warm-vs-cold retrain figures of one cycle (``warm_vs_cold_ndcg``, ``warm_vs_cold_time``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.harness.facts import RESULTS_DIR, load_average, machine, now_utc
from benchmarks.harness.running import say, work_folder
from benchmarks.harness.tables import fmt, markdown_table, write_results
from recsys.core.triton_client import TritonRecommender
from recsys.loop.items import refresh_items
from recsys.loop.records import Cycle, record
from recsys.loop.retrain import RetrainOptions, retrain_cycle
from recsys.simulate import organic_plays, post_plays, simulate
from recsys.stack.local import LocalStack, StackConfig, StackPorts
from trainer.data.interactions import Interactions, from_frame
from trainer.data.synthetic import SyntheticConfig, SyntheticWorld, generate
from trainer.pipeline import save_result, train_and_evaluate
from trainer.triton.family import ENSEMBLE_B, FACTOR, Family, Options
from trainer.triton.publish import publish
from trainer.triton.repository import render_repository

ARMS: dict[str, Family] = {"static": FACTOR.renamed("_static"), "fold_in": FACTOR.renamed("_foldin"), "loop": FACTOR}
MODEL = {arm: f"{ENSEMBLE_B}{family.name.removeprefix('factor')}" for arm, family in ARMS.items()}
GOALS = {"loop_vs_static": 1.25, "loop_vs_own_pre_drift": 0.90, "new_item_p50_s": 120.0}
BASE_PARAMS = {"factors": 32, "iterations": 10, "regularization": 5.0, "seed": 1}


@dataclass
class Drift:
    """What changes at the drift point, and the truth the simulated listeners act on after it."""

    world: SyntheticWorld
    released: np.ndarray[Any, np.dtype[np.bool_]]  # items held back from the base data, released at the drift
    moved: np.ndarray[Any, np.dtype[np.int64]] = field(default_factory=lambda: np.zeros(0, np.int64))


def build_world(args: argparse.Namespace) -> Drift:
    world = generate(
        SyntheticConfig(
            n_users=args.users, n_items=args.items, n_genres=args.genres, mean_sessions_per_user=args.sessions,
            seed=args.seed,
        )
    )  # fmt: skip
    rng = np.random.default_rng(args.seed)
    released = np.zeros(world.n_items, dtype=bool)
    released[rng.choice(world.n_items, size=args.releases, replace=False)] = True
    return Drift(world, released)


def base_data(drift: Drift) -> Interactions:
    """The world's plays before the drift: every pair of a released item left out (the model has never seen it)."""
    data = drift.world.interactions
    keep = ~drift.released[data.items]
    frame = pd.DataFrame(
        {
            "user": data.user_ids.ids[data.users[keep]],
            "item": data.item_ids.ids[data.items[keep]],
            "weight": data.weights[keep],
        }
    )
    interactions, _ = from_frame(frame, source="drift world before the drift")
    return interactions


def drifted(drift: Drift, share: float, rng: np.random.Generator) -> Drift:
    """A share of listeners move to a genre they hardly played (their taste becomes 90% that genre)."""
    taste = drift.world.user_taste.astype(np.float64).copy()
    moved = rng.choice(len(taste), size=int(share * len(taste)), replace=False)
    for user in moved.tolist():
        order = np.argsort(taste[user])
        new = int(rng.choice(order[: max(1, len(order) // 2)]))  # one of the genres they like least
        taste[user] = 0.1 * taste[user] + 0.9 * np.eye(len(order))[new]
    world = dataclasses.replace(drift.world, user_taste=taste.astype(drift.world.user_taste.dtype))
    return Drift(world, drift.released, moved.astype(np.int64))


def drift_postgres_dir() -> Path:
    """A cluster of the benchmark's own, beside the stack's default one (which another stack may be using)."""
    from recsys.stack.postgres import default_data_dir

    return default_data_dir().with_name(default_data_dir().name + "-drift")


def experiment_file(folder: Path) -> Path:
    shares = [33.33, 33.33, 33.34]
    groups = "\n".join(
        f"  - name: {arm}\n    model: {MODEL[arm]}\n    share: {share}" for arm, share in zip(ARMS, shares, strict=True)
    )
    path = folder / "drift-experiment.yaml"
    path.write_text(f"name: drift\ngroups:\n{groups}\n")
    return path


@dataclass
class Releases:
    """When each released item qualified (its 3rd distinct listener's play acknowledged) and was first served."""

    min_listeners: int
    listeners: dict[int, set[int]] = field(default_factory=dict)
    qualified_at: dict[int, float] = field(default_factory=dict)
    seen_at: dict[int, float] = field(default_factory=dict)

    def on_ack(self, plays: list[tuple[int, int]], when: float, released: np.ndarray[Any, Any]) -> None:
        for user, item in plays:
            if released[item] and item not in self.qualified_at:
                fans = self.listeners.setdefault(item, set())
                fans.add(user)
                if len(fans) >= self.min_listeners:
                    self.qualified_at[item] = when

    def seconds(self) -> list[float]:
        return sorted(self.seen_at[i] - self.qualified_at[i] for i in self.seen_at if i in self.qualified_at)


def look_for_releases(
    client: TritonRecommender, drift: Drift, releases: Releases, loop_users: list[str], top_k: int
) -> None:
    """Asks the loop arm for its listeners' recommendations and notes each qualified release seen first now."""
    waiting = {i for i in releases.qualified_at if i not in releases.seen_at}
    if not waiting:
        return
    now = time.monotonic()
    ids = drift.world.interactions.item_ids.ids
    wanted = {str(ids[i]): i for i in waiting}
    for answer in client.recommend(ENSEMBLE_B, loop_users, top_k=top_k):
        for item in answer.item_ids:
            if item in wanted and wanted[item] not in releases.seen_at:
                releases.seen_at[wanted[item]] = now


def warm_vs_cold(stack: LocalStack, repository: Path, window: timedelta) -> dict[str, float]:
    """One retrain's data, fitted warm (from the served run) and cold (from scratch, the full iterations), both
    judged by the gate on the same newest window: the ratios of NDCG@10 and of fit time."""
    from recsys.loop.retrain import warm_params, window_of
    from trainer.artifacts import load_run
    from trainer.data.log import load_log
    from trainer.gate import Ranker, window_metrics
    from trainer.pipeline import build_model
    from trainer.triton.repository import served_run
    from trainer.warm import warm_start

    _, run_dir = served_run(repository, FACTOR)
    base = load_run(run_dir)
    until = datetime.now(UTC)
    before = load_log(stack.database_url, until=until - window, base=base)
    newest = load_log(stack.database_url, since=until - window, until=until)
    began = time.perf_counter()
    warm = warm_start(base, before.interactions, params=warm_params(base, RetrainOptions())).model
    warm_s = time.perf_counter() - began
    began = time.perf_counter()
    cold = build_model("als", base.metrics.get("params")).fit(before.interactions)
    cold_s = time.perf_counter() - began
    data = before.interactions
    win = window_of(newest)
    users = sorted(u for u in win.relevant() if data.user_ids.index(u) is not None)
    figures = {
        name: window_metrics(Ranker(model, data.user_ids, data.item_ids, data.to_csr()), users, win)["ndcg@10"]
        for name, model in (("warm", warm), ("cold", cold))
    }
    return {
        "warm_ndcg": figures["warm"],
        "cold_ndcg": figures["cold"],
        "warm_s": warm_s,
        "cold_s": cold_s,
        "warm_vs_cold_ndcg": figures["warm"] / figures["cold"] if figures["cold"] else float("nan"),
        "warm_vs_cold_time": warm_s / cold_s if cold_s else float("nan"),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed + 1)
    drift = build_world(args)
    with work_folder("drift", keep=args.keep) as work:
        say(f"world: {args.users:,} listeners, {args.items:,} items ({args.releases} held back as releases)")
        run_dir = work / "base"
        save_result(train_and_evaluate(base_data(drift), "als", BASE_PARAMS, refit=True), run_dir)
        repository = work / "repository"
        render_repository(repository, options=Options(live_fold_in=False), families=(ARMS["static"],))
        for arm in ("static", "fold_in", "loop"):
            publish(run_dir, repository, family=ARMS[arm])
        config = StackConfig(
            model_repository=repository,
            workdir=work / "stack",
            ports=StackPorts.free(),
            experiment_file=experiment_file(work),
            postgres_dir=Path(args.postgres_dir) if args.postgres_dir else drift_postgres_dir(),
            families=tuple(ARMS.values()),
        )
        stack = LocalStack(config)
        stack.postgres.start()
        stack.postgres.reset_database()
        releases = Releases(min_listeners=3)
        cycles: list[dict[str, Any]] = []
        loop_cycles: list[Cycle] = []
        failed: Counter[str] = Counter()
        comparison: dict[str, float] = {}
        with stack:
            client = TritonRecommender(f"127.0.0.1:{config.ports.triton_grpc}", timeout_s=30)
            users = drift.world.interactions.user_ids.ids.astype(str)
            arm_of = {u: stack.experiment.assign(u) for u in users.tolist()}  # the gateway's and NGINX's own split
            loop_users = [u for u, arm in arm_of.items() if arm == "loop"]
            for cycle in range(args.cycles):
                began, steps_before = time.monotonic(), len(loop_cycles)
                if cycle == args.drift_at:
                    drift = drifted(drift, args.drift_share, rng)
                    say(f"cycle {cycle}: drift: {len(drift.moved)} listeners moved, {args.releases} items released")
                # 1. recommendations, clicks and skips: the CTR of this cycle, per arm
                summary = asyncio.run(
                    simulate(
                        stack.nginx_url, drift.world, listeners=args.listeners, requests_per_listener=args.requests,
                        seed=args.seed * 1000 + cycle,
                    )
                )  # fmt: skip
                failed.update(summary.errors)
                ctr = {arm: summary.ctr(arm) for arm in ARMS}
                # 2. organic plays from every listener's own player (released items too, after the drift)
                available = ~drift.released if cycle < args.drift_at else np.ones_like(drift.released)
                boost = np.where(drift.released, args.release_boost, 1.0)
                plays = organic_plays(
                    drift.world, np.arange(drift.world.n_users), args.plays, rng, available=available, boost=boost
                )
                posted = asyncio.run(
                    post_plays(
                        stack.nginx_url, drift.world, plays,
                        on_ack=functools.partial(releases.on_ack, released=drift.released),
                    )
                )  # fmt: skip
                failed.update(posted.errors)
                stack.wait_drained()
                # 3. the loop arm learns: new releases every cycle, a gated warm retrain every few
                step = refresh_items(repository, stack.database_url, stack.triton, work / "loop")
                loop_cycles.append(step)
                look_for_releases(client, drift, releases, loop_users, args.top_k)
                if cycle >= args.drift_at and (cycle - args.drift_at) % args.retrain_every == args.retrain_every - 1:
                    cycle_s = max(time.monotonic() - began, 1.0)
                    window = timedelta(seconds=cycle_s)
                    if not comparison:
                        comparison = warm_vs_cold(stack, repository, window)
                    # Simulated time is compressed (a cycle stands for a day or so of listening): the half-life of
                    # the log's weights is counted in cycles, as a deployment would count it in days.
                    decay_days = args.decay_cycles * cycle_s / 86_400 if args.decay_cycles > 0 else None
                    options = RetrainOptions(
                        window=window, tolerance=args.tolerance, min_users=20, decay_days=decay_days
                    )
                    step = retrain_cycle(repository, stack.database_url, stack.triton, work / "loop", options)
                    loop_cycles.append(step)
                    look_for_releases(client, drift, releases, loop_users, args.top_k)
                for done in loop_cycles[steps_before:]:
                    record(stack.database_url, done)
                cycles.append(
                    {
                        "cycle": cycle,
                        "drifted": cycle >= args.drift_at,
                        "ctr": ctr,
                        "impressions": dict(summary.impressions),
                        "plays_posted": posted.accepted,
                        "loop": [c.as_dict() for c in loop_cycles[steps_before:]],
                        "seconds": round(time.monotonic() - began, 1),
                    }
                )
                say(
                    f"cycle {cycle}: CTR "
                    + ", ".join(f"{arm} {ctr[arm]:.3f}" for arm in ARMS)
                    + f"; loop: {loop_cycles[-1].decision} ({loop_cycles[-1].reason[:80]})"
                )
            client.close()
    return summarize(args, cycles, loop_cycles, releases, failed, comparison)


def summarize(
    args: argparse.Namespace,
    cycles: list[dict[str, Any]],
    loop_cycles: list[Cycle],
    releases: Releases,
    failed: Counter[str],
    comparison: dict[str, float],
) -> dict[str, Any]:
    def mean_ctr(rows: list[dict[str, Any]], arm: str) -> float:
        return float(np.mean([row["ctr"][arm] for row in rows])) if rows else float("nan")

    pre = [row for row in cycles if not row["drifted"]]
    final = cycles[-args.final_cycles :]
    seconds = releases.seconds()
    return {
        "ctr_final": {arm: mean_ctr(final, arm) for arm in ARMS},
        "ctr_pre_drift": {arm: mean_ctr(pre, arm) for arm in ARMS},
        "new_item_seconds_p50": float(np.percentile(seconds, 50)) if seconds else None,
        "new_item_seconds_p90": float(np.percentile(seconds, 90)) if seconds else None,
        "new_items_qualified": len(releases.qualified_at),
        "new_items_served": len(releases.seen_at),
        "failed_requests": sum(failed.values()),
        "failures": dict(failed),
        **{k: comparison.get(k) for k in ("warm_vs_cold_ndcg", "warm_vs_cold_time")},
        "warm_vs_cold": comparison,
        "cycles": cycles,
        "loop_cycles": [c.as_dict() for c in loop_cycles],
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "goals": GOALS,
        "machine": machine(),
        "load_average": load_average(),
        "measured_at": now_utc(),
    }


def markdown(result: dict[str, Any]) -> str:
    final, pre = result["ctr_final"], result["ctr_pre_drift"]
    loop_vs_static = final["loop"] / final["static"] if final["static"] else float("nan")
    loop_vs_pre = final["loop"] / pre["loop"] if pre["loop"] else float("nan")
    p50 = result["new_item_seconds_p50"]
    goals = [
        ("loop final CTR / static final CTR", fmt(loop_vs_static), f">= {GOALS['loop_vs_static']}",
         loop_vs_static >= GOALS["loop_vs_static"]),
        ("loop final CTR / loop pre-drift CTR", fmt(loop_vs_pre), f">= {GOALS['loop_vs_own_pre_drift']}",
         loop_vs_pre >= GOALS["loop_vs_own_pre_drift"]),
        ("new release served after its qualifying plays, p50 (s)", fmt(p50, 1), f"<= {GOALS['new_item_p50_s']:.0f}",
         p50 is not None and p50 <= GOALS["new_item_p50_s"]),
        ("failed requests (every non-2xx of the run)", str(result["failed_requests"]), "0",
         result["failed_requests"] == 0),
    ]  # fmt: skip
    comparison = result["warm_vs_cold"]
    if comparison:
        goals += [
            ("warm retrain NDCG@10 / cold", fmt(comparison["warm_vs_cold_ndcg"], 3), ">= 0.99",
             comparison["warm_vs_cold_ndcg"] >= 0.99),
            ("warm retrain time / cold", fmt(comparison["warm_vs_cold_time"], 3), "<= 0.30",
             comparison["warm_vs_cold_time"] <= 0.30),
        ]  # fmt: skip
    per_cycle = markdown_table(
        ["cycle", "drifted", *(f"CTR {arm}" for arm in ARMS), "loop step(s)"],
        [
            [row["cycle"], "yes" if row["drifted"] else "", *(fmt(row["ctr"][arm], 3) for arm in ARMS),
             "; ".join(f"{c['kind']} {c['decision']}" for c in row["loop"])]
            for row in result["cycles"]
        ],
    )  # fmt: skip
    s = result["settings"]
    return "\n".join(
        [
            "# The loop on a world that changes (`python -m benchmarks.drift`)",
            "",
            f"Measured {result['measured_at']} on {result['machine']['cpu']} ({result['machine']['cores']} cores), "
            f"load average {result['load_average']}. World: {s['users']:,} listeners, {s['items']:,} items, "
            f"{s['genres']} genres; {s['releases']} items released at cycle {s['drift_at']}, when "
            f"{s['drift_share']:.0%} of listeners move to another genre. {s['cycles']} cycles of "
            f"{s['listeners']} listeners x {s['requests']} requests through NGINX, then {s['plays']} organic plays "
            f"per listener; the loop arm refreshes new items every cycle and retrains every {s['retrain_every']} "
            f"(log weights' half-life {s['decay_cycles']} cycle(s)).",
            "",
            markdown_table(
                ["goal", "measured", "target", "met"], [[*g[:3], "yes" if g[3] else "**no**"] for g in goals]
            ),
            "",
            markdown_table(
                ["arm", "CTR before the drift", "CTR final"],
                [[arm, fmt(pre[arm], 3), fmt(final[arm], 3)] for arm in ARMS],
            ),
            "",
            f"Releases: {result['new_items_qualified']} qualified, {result['new_items_served']} seen served in the "
            f"loop arm; p50 {fmt(p50, 1)} s, p90 {fmt(result['new_item_seconds_p90'], 1)} s from the acknowledgement "
            "of the play that made each qualify (the loop here refreshes right after the plays; "
            "`recsys retrain --items-every 30s` adds up to 30 s).",
            "",
            per_cycle,
            "",
            "![CTR per cycle and arm](drift.png)",
            "",
        ]
    )


def plot(result: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    cycles = [row["cycle"] for row in result["cycles"]]
    for arm in ARMS:
        axes.plot(cycles, [row["ctr"][arm] for row in result["cycles"]], marker="o", label=arm)
    axes.axvline(result["settings"]["drift_at"] - 0.5, color="grey", linestyle="--", label="drift")
    axes.set_xlabel("cycle")
    axes.set_ylabel("CTR")
    axes.set_title("CTR per cycle: static vs fold-in vs the full loop")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1200)
    parser.add_argument("--items", type=int, default=1500)
    parser.add_argument("--genres", type=int, default=12)
    parser.add_argument("--sessions", type=float, default=6.0)
    parser.add_argument("--releases", type=int, default=40, help="items held back and released at the drift")
    parser.add_argument("--release-boost", type=float, default=30.0, help="popularity boost of a fresh release")
    parser.add_argument("--cycles", type=int, default=8)
    parser.add_argument("--drift-at", type=int, default=2)
    parser.add_argument("--drift-share", type=float, default=0.5)
    parser.add_argument("--listeners", type=int, default=1200, help="listeners asking for recommendations per cycle")
    parser.add_argument("--requests", type=int, default=2, help="requests per listener per cycle")
    parser.add_argument("--plays", type=int, default=8, help="organic plays per listener per cycle")
    parser.add_argument("--retrain-every", type=int, default=1, help="cycles between the loop's retrains")
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument(
        "--decay-cycles", type=float, default=1.0, help="half-life of the retrains' log weights, in cycles (0: none)"
    )
    parser.add_argument("--final-cycles", type=int, default=2, help="cycles averaged for the final CTR")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--postgres-dir", default="", help="PostgreSQL data folder (default: the stack's)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--quick", action="store_true", help="small world, 5 cycles: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.items, args.releases, args.listeners = 400, 600, 12, 400
        args.cycles, args.drift_at = 5, 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    began = time.perf_counter()
    result = run(args)
    result["seconds"] = round(time.perf_counter() - began, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "drift-quick" if args.quick else "drift"
    plot(result, args.out / f"{stem}.png")
    md = markdown(result).replace("(drift.png)", f"({stem}.png)")
    write_results(args.out, stem, md, result)
    print(md)
    shutil.rmtree(args.out / "__pycache__", ignore_errors=True)


if __name__ == "__main__":
    main()
