"""Warm vs cold retraining in a world that moves: does continuing from the served model reach a cold retrain's
quality in a fraction of its time?

The world is one synthetic listening history (``trainer/data/synthetic.py``) cut in two at day ``--cut``:

* the base run: ALS or BPR fitted (cold, full iterations) on the plays before the cut, without the listeners
  who only arrive later (``--new-users``) and without the items released later (``--new-items``);
* the retrain: everything, split once (temporal: each listener's last-met items held out); the cold retrain
  fits the training part from scratch, the warm one continues from the base run (``trainer.warm``).

Both retrains see the same training part and are scored on the same held-out part (NDCG@10 as everywhere in
the project). The base run never sees a held-out pair, so the warm start gets no peek at the test. The goal
(issue 13): warm NDCG@10 >= 0.99 x cold, warm time <= 0.30 x cold.

    .venv/bin/python -m benchmarks.warm_start            # results/warm_start.{md,json}
    .venv/bin/python -m benchmarks.warm_start --quick    # a small world: results/warm_start-quick.*
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from benchmarks.harness.facts import RESULTS_DIR, load_average, machine, machine_line, now_utc
from benchmarks.harness.running import say
from benchmarks.harness.tables import markdown_table, write_results
from trainer.artifacts import Run
from trainer.data.interactions import Interactions, from_frame
from trainer.data.synthetic import SECONDS_PER_DAY, SyntheticConfig, generate
from trainer.evaluation import evaluate
from trainer.models.base import FactorModel
from trainer.pipeline import build_model
from trainer.splits import temporal
from trainer.warm import align_rows, default_fraction, warm_params, warm_start

GOAL_QUALITY = 0.99
GOAL_TIME = 0.30


@dataclass(frozen=True)
class World:
    train: Interactions  # the retrain's data: everything but the held-out pairs
    test: Interactions
    base: Interactions  # the base run's data: the training part's plays before the cut, old listeners and items
    new_users: int
    new_items: int


def build_world(config: SyntheticConfig, cut_day: float, new_user_share: float, new_item_share: float) -> World:
    world = generate(config).interactions
    split = temporal(world)
    train = split.train
    assert train.events is not None  # the synthetic world keeps every play
    rng = np.random.default_rng(config.seed + 1)
    users = train.user_ids.external(train.events.users)
    items = train.item_ids.external(train.events.items)
    late_users = set(rng.choice(train.user_ids.ids, int(new_user_share * train.n_users), replace=False).tolist())
    late_items = set(rng.choice(train.item_ids.ids, int(new_item_share * train.n_items), replace=False).tolist())
    cut = config.start_time + int(cut_day * SECONDS_PER_DAY)
    before = (train.events.timestamps < cut) & ~np.isin(users, list(late_users)) & ~np.isin(items, list(late_items))
    frame = pd.DataFrame({"user": users[before], "item": items[before], "time": train.events.timestamps[before]})
    base, _ = from_frame(frame, weight_col=None, time_col="time", source="base")
    return World(train, split.test, base, train.n_users - base.n_users, train.n_items - base.n_items)


@dataclass(frozen=True)
class Trial:
    model: str
    cold_ndcg: float
    warm_ndcg: float
    base_ndcg: float  # the base run itself on the new test (users/items it lacks score as misses)
    cold_s: float  # wall time
    warm_s: float
    cold_cpu_s: float  # CPU time of this process (all threads): steadier than wall time on a shared machine
    warm_cpu_s: float
    cold_passes: int
    warm_passes: int

    @property
    def quality(self) -> float:
        return self.warm_ndcg / self.cold_ndcg

    @property
    def time(self) -> float:
        return self.warm_s / self.cold_s

    @property
    def cpu_time(self) -> float:
        return self.warm_cpu_s / self.cold_cpu_s


def run_model(world: World, name: str, params: dict[str, Any], fraction: float | None, device: str) -> Trial:
    fraction = default_fraction(name) if fraction is None else fraction
    say(f"{name}: base run on {len(world.base):,} pairs")
    base_model = build_model(name, params, device=device)
    assert isinstance(base_model, FactorModel)
    base_model.fit(world.base)
    base_run = Run(base_model, world.base.user_ids, world.base.item_ids, None, world.base.to_csr(), {})

    say(f"{name}: cold retrain on {len(world.train):,} pairs")
    cold = build_model(name, params, device=device)
    start, start_cpu = time.perf_counter(), time.process_time()
    cold.fit(world.train)
    _sync(device)
    cold_s, cold_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu

    say(f"{name}: warm retrain")
    start, start_cpu = time.perf_counter(), time.process_time()
    warm = warm_start(base_run, world.train, fraction=fraction, params=params, device=device)
    _sync(device)
    warm_s, warm_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu  # alignment included

    field = "iterations" if name == "als" else "epochs"
    return Trial(
        model=name,
        cold_ndcg=evaluate(cold, world.train, world.test)["ndcg@10"],
        warm_ndcg=evaluate(warm.model, world.train, world.test)["ndcg@10"],
        base_ndcg=_base_on_new_test(base_run, world),
        cold_s=cold_s,
        warm_s=warm_s,
        cold_cpu_s=cold_cpu_s,
        warm_cpu_s=warm_cpu_s,
        cold_passes=int(getattr(cold.params, field)),
        warm_passes=int(getattr(warm_params(cold.params, name, fraction), field)),
    )


def _base_on_new_test(run: Run, world: World) -> float:
    """The base run serving the new period without a retrain: what not retraining would give. Users and items it
    never saw get zero vectors (and the lowest bias), so they score as the cold-start fallback would."""
    assert isinstance(run.model, FactorModel)
    users, items, bias = run.model.factors()
    user_pos = run.user_ids.indices(world.train.user_ids.ids)
    item_pos = run.item_ids.indices(world.train.item_ids.ids)
    model = build_model(run.model.name, run.model.params.to_dict())
    assert isinstance(model, FactorModel)
    model.user_factors = torch.from_numpy(
        align_rows(users, user_pos, np.zeros((len(user_pos), users.shape[1]), np.float32))
    )
    model.item_factors = torch.from_numpy(
        align_rows(items, item_pos, np.zeros((len(item_pos), items.shape[1]), np.float32))
    )
    if bias is not None:
        floor = np.full((len(item_pos), 1), bias.min(), np.float32)
        model.item_bias = torch.from_numpy(align_rows(bias[:, None], item_pos, floor)[:, 0])
    model.n_users, model.n_items = world.train.n_users, world.train.n_items
    return evaluate(model, world.train, world.test)["ndcg@10"]


def _fractions(args: argparse.Namespace) -> str:
    if args.fraction is not None:
        return f"{args.fraction:g}"
    return ", ".join(f"{default_fraction(name):g} ({name})" for name in args.models.split(","))


def verdict(t: Trial) -> str:
    """One line per model: the goal met, or by how much each part missed."""
    misses = []
    if t.quality < GOAL_QUALITY:
        misses.append(f"NDCG@10 ratio {t.quality:.3f}, {GOAL_QUALITY - t.quality:.3f} short of {GOAL_QUALITY:g}")
    for what, ratio in (("wall", t.time), ("CPU", t.cpu_time)):
        if ratio > GOAL_TIME:
            misses.append(f"{what} time ratio {ratio:.3f}, {ratio - GOAL_TIME:.3f} over {GOAL_TIME:g}")
    return f"{t.model}: goal met" if not misses else f"{t.model}: missed ({'; '.join(misses)})"


def _met(trial: Trial) -> bool:
    return trial.quality >= GOAL_QUALITY and max(trial.time, trial.cpu_time) <= GOAL_TIME


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def report(trials: list[Trial], args: argparse.Namespace, world: World, load_before: float | None) -> str:
    rows = [
        (
            t.model,
            f"{t.base_ndcg:.4f}",
            f"{t.cold_ndcg:.4f}",
            f"{t.warm_ndcg:.4f}",
            f"{t.quality:.3f}" + (" ✓" if t.quality >= GOAL_QUALITY else " ✗"),
            f"{t.cold_s:.2f} / {t.cold_cpu_s:.2f} ({t.cold_passes})",
            f"{t.warm_s:.2f} / {t.warm_cpu_s:.2f} ({t.warm_passes})",
            f"{t.time:.3f}" + (" ✓" if t.time <= GOAL_TIME else " ✗"),
            f"{t.cpu_time:.3f}" + (" ✓" if t.cpu_time <= GOAL_TIME else " ✗"),
        )
        for t in trials
    ]
    header = ("model", "base, no retrain", "cold NDCG@10", "warm NDCG@10", "warm/cold NDCG",
              "cold wall/CPU s (passes)", "warm wall/CPU s (passes)", "warm/cold wall", "warm/cold CPU")  # fmt: skip
    return "\n".join(
        [
            "# Warm vs cold retraining (benchmarks/warm_start.py)",
            "",
            f"World: {args.users:,} listeners x {args.items:,} items over {args.days:g} days; the base run fitted on "
            f"days 0-{args.cut:g} without {world.new_users:,} listeners and {world.new_items:,} items that arrive "
            f"later ({len(world.base):,} pairs); the retrain on the whole training part ({len(world.train):,} pairs, "
            f"{world.train.n_users:,} x {world.train.n_items:,}), scored on each listener's last-met items "
            f"({len(world.test):,} pairs). Warm start: {_fractions(args)} of the cold passes. Device: {args.device}. "
            f"Goal: warm >= {GOAL_QUALITY:g} x cold NDCG@10 in <= {GOAL_TIME:g} x cold time (alignment included). "
            "CPU time is this process's, all threads: on a shared machine it moves less than wall time.",
            "",
            markdown_table(header, rows),
            "",
            *(f"- {verdict(t)}" for t in trials),
            "",
            machine_line(load_before),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--days", type=float, default=120.0)
    parser.add_argument("--cut", type=float, default=100.0, help="Day the base run ends.")
    parser.add_argument("--new-users", type=float, default=0.1, help="Share of listeners who arrive after the cut.")
    parser.add_argument("--new-items", type=float, default=0.05, help="Share of items released after the cut.")
    parser.add_argument(
        "--fraction", type=float, default=None, help="Warm passes as a share of the cold ones [each model's default]."
    )
    parser.add_argument("--models", default="als,bpr")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="A small world (4,000 x 3,000) for a quick look.")
    parser.add_argument("--tag", default="", help="Suffix of the results' names (results/warm_start-TAG.*).")
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.items = 4_000, 3_000
    load_before = load_average()
    config = SyntheticConfig(n_users=args.users, n_items=args.items, n_genres=30, days=args.days, seed=args.seed)
    world = build_world(config, args.cut, args.new_users, args.new_items)
    trials = [run_model(world, name, {}, args.fraction, args.device) for name in args.models.split(",")]
    markdown = report(trials, args, world, load_before)
    payload = {
        "created_at": now_utc(),
        "machine": machine(),
        "args": vars(args),
        "world": {
            "train_pairs": len(world.train),
            "test_pairs": len(world.test),
            "base_pairs": len(world.base),
            "new_users": world.new_users,
            "new_items": world.new_items,
        },
        "goal": {"quality": GOAL_QUALITY, "time": GOAL_TIME},
        "trials": [
            {
                **t.__dict__,
                "quality": t.quality,
                "time": t.time,
                "met": t.quality >= GOAL_QUALITY and t.time <= GOAL_TIME,
            }
            for t in trials
        ],
    }
    stem = "warm_start-quick" if args.quick else "warm_start"
    if args.device != "cpu":
        stem += f"-{args.device.split(':')[0]}"
    if args.tag:
        stem += f"-{args.tag}"
    write_results(RESULTS_DIR, stem, markdown, payload)
    print(markdown)


if __name__ == "__main__":
    main()
