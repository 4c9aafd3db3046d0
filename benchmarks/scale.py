"""Our ALS and BPR at scale: synthetic 100k users x 50k items x ~5M plays, seconds per iteration and peak memory.

Each phase runs in its own Python process so that its peak RSS (``ru_maxrss``) is its own:

1. ``generate``: builds the synthetic world (timed, peak RSS) and saves the aggregated pairs to a temporary
   ``.npz``;
2. ``als`` and ``bpr``: load those pairs, fit the model with default params but a few iterations/epochs, and
   time every iteration (``trainer.progress.track`` is wrapped to timestamp each one) apart from the setup
   (weighting, transposes, tensors) done before the first.

    .venv/bin/python -m benchmarks.scale                       # full size, writes benchmarks/results/scale.{md,json}
    .venv/bin/python -m benchmarks.scale --users 5000 --items 2500   # smoke test (writes scale-small.*)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar
from unittest import mock

import numpy as np
import torch

from benchmarks.harness.facts import (
    REPO_ROOT,
    RESULTS_DIR,
    current_rss_mib,
    git_revision,
    load_average,
    machine,
    now_utc,
    peak_rss_mib,
    versions,
)
from benchmarks.harness.tables import markdown_table, write_results

T = TypeVar("T")

FULL_USERS, FULL_ITEMS = 100_000, 50_000


# ------------------------------------------------------------------------------------------------ workers


class IterationClock:
    """Stands in for ``trainer.progress.track`` inside a model module and timestamps each iteration's start."""

    def __init__(self, cuda: bool = False) -> None:
        self.starts: list[float] = []
        self.cuda = cuda

    def track(
        self, items: Iterable[T], description: str, *, total: int | None = None, enabled: bool = True
    ) -> Iterator[T]:
        for item in items:
            if self.cuda:  # kernels run asynchronously: a step ends when the device is done
                torch.cuda.synchronize()
            self.starts.append(time.perf_counter())
            yield item


def worker_generate(args: argparse.Namespace) -> dict[str, Any]:
    from trainer.data.synthetic import SyntheticConfig, generate

    config = SyntheticConfig(
        n_users=args.users,
        n_items=args.items,
        mean_sessions_per_user=args.sessions,
        mean_session_length=args.session_length,
        seed=args.seed,
    )
    rss_before = current_rss_mib()
    start = time.perf_counter()
    world = generate(config)
    seconds = time.perf_counter() - start
    data = world.interactions
    n_plays = len(data.events) if data.events is not None else int(data.weights.sum())
    np.savez(
        args.data,
        users=data.users,
        items=data.items,
        weights=data.weights,
        shape=np.array([data.n_users, data.n_items], dtype=np.int64),
    )
    return {
        "config": dataclasses.asdict(config),
        "seconds": seconds,
        "plays": n_plays,
        "pairs": len(data),
        "users_with_plays": int(np.unique(data.users).size),
        "items_with_plays": int(np.unique(data.items).size),
        "density": len(data) / (data.n_users * data.n_items),
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak_rss_mib(),
    }


def load_pairs(path: Path) -> Any:
    """The saved pairs as :class:`Interactions` with identity id maps."""
    from trainer.data.interactions import IdMap, Interactions

    with np.load(path) as npz:
        n_users, n_items = (int(v) for v in npz["shape"])
        return Interactions(
            users=npz["users"],
            items=npz["items"],
            weights=npz["weights"],
            user_ids=IdMap(np.arange(n_users)),
            item_ids=IdMap(np.arange(n_items)),
        )


def worker_model(args: argparse.Namespace) -> dict[str, Any]:
    import trainer.models.als as als_module
    import trainer.models.bpr as bpr_module

    rss_import = current_rss_mib()
    train = load_pairs(args.data)
    rss_loaded = current_rss_mib()
    peak_loaded = peak_rss_mib()
    model: Any
    module: ModuleType
    if args.worker == "als":
        params: Any = als_module.ALSParams(iterations=args.als_iterations)
        model, module, steps = als_module.ALS(params, device=args.device), als_module, params.iterations
    else:
        params = bpr_module.BPRParams(epochs=args.bpr_epochs)
        model, module, steps = bpr_module.BPR(params, device=args.device), bpr_module, params.epochs

    clock = IterationClock(cuda=args.device.startswith("cuda"))
    patched = hasattr(module, "track")
    with mock.patch.object(module, "track", clock.track) if patched else nullcontext():
        start = time.perf_counter()
        model.fit(train)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        end = time.perf_counter()

    total = end - start
    if len(clock.starts) == steps:
        per_step = list(np.diff([*clock.starts, end]))
        setup = clock.starts[0] - start
    else:  # the model no longer loops through track(): fall back to an even split
        per_step = [total / steps] * steps
        setup = float("nan")
    return {
        "model": args.worker,
        "params": params.to_dict(),
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "pairs": len(train),
        "fit_s": total,
        "setup_s": setup,
        "step_s": [float(s) for s in per_step],
        "median_step_s": statistics.median(per_step),
        "pairs_per_s": len(train) / statistics.median(per_step),
        "per_step_timed": len(clock.starts) == steps,
        "rss_after_import_mib": rss_import,
        "rss_after_load_mib": rss_loaded,
        "peak_rss_after_load_mib": peak_loaded,
        "peak_rss_mib": peak_rss_mib(),
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else None,
    }


# ------------------------------------------------------------------------------------------------ driver


def run_worker(phase: str, args: argparse.Namespace, data: Path, result: Path) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "benchmarks.scale",
        "--worker",
        phase,
        "--data",
        str(data),
        "--result",
        str(result),
        "--users",
        str(args.users),
        "--items",
        str(args.items),
        "--sessions",
        str(args.sessions),
        "--session-length",
        str(args.session_length),
        "--seed",
        str(args.seed),
        "--als-iterations",
        str(args.als_iterations),
        "--bpr-epochs",
        str(args.bpr_epochs),
        "--device",
        args.device,
    ]
    log(f"{phase}: started")
    wall = time.perf_counter()
    subprocess.run(command, cwd=REPO_ROOT, check=True)
    found: dict[str, Any] = json.loads(result.read_text())
    found["process_wall_s"] = time.perf_counter() - wall
    return found


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def render(meta: dict[str, Any], gen: dict[str, Any], models: list[dict[str, Any]]) -> str:
    cfg = gen["config"]
    rows = []
    for m in models:
        unit = "iteration" if m["model"] == "als" else "epoch"
        steps = m["step_s"]
        rows.append(
            [
                m["model"].upper(),
                f"{len(steps)} {unit}s",
                f"{m['median_step_s']:.2f}",
                f"{min(steps):.2f} - {max(steps):.2f}",
                f"{m['setup_s']:.2f}",
                f"{m['fit_s']:.1f}",
                f"{m['pairs_per_s'] / 1e6:.2f}",
                f"{m['peak_rss_mib']:,.0f}",
                f"{m['peak_rss_mib'] - m['rss_after_load_mib']:,.0f}",
            ]
        )
    return "\n".join(
        [
            f"# Scale: our ALS and BPR on synthetic data{'' if meta['full_size'] else ' [reduced size]'}",
            "",
            f"{meta['date']} · {meta['machine']['cpu']} · {meta['machine']['usable_cores']} cores · "
            f"{meta['machine']['memory_gib']} GiB · torch {meta['versions']['torch']} "
            f"({models[0]['torch_threads'] if models else '?'} threads, device {meta['device']}) · "
            f"commit {meta['git']} · load average {meta['load_start']} at start, {meta['load_end']} at end",
            "",
            f"Data: {cfg['n_users']:,} users x {cfg['n_items']:,} items, {gen['plays']:,} plays aggregated to "
            f"{gen['pairs']:,} distinct pairs (density {gen['density']:.2e}); generated in {gen['seconds']:.1f} s, "
            f"peak RSS {gen['peak_rss_mib']:,.0f} MiB.",
            "",
            markdown_table(
                [
                    "model",
                    "ran",
                    "s / step (median)",
                    "min - max",
                    "setup s",
                    "fit s",
                    "M pairs / s",
                    "peak RSS MiB",
                    "peak - loaded MiB",
                ],
                rows,
            ),
            "",
            "A step is one ALS iteration (users then items) or one BPR epoch (every pair once). *setup* is the "
            "time before the first step (weighting, transposes, tensors). *peak RSS* is the model process's "
            "high-water mark (Python, torch and the loaded pairs included); *peak - loaded* is what the fit "
            "added over the process right after loading the pairs. Default params except the step counts.",
            "",
        ]
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scale",
        description="Seconds per ALS iteration / BPR epoch and peak RSS on synthetic data, each phase in its own "
        "process. Default: 100k users x 50k items x ~5M plays (about 3-6 minutes on 2 idle cores). Writes "
        "<out>/scale.{md,json}, or scale-small.* at a reduced size.",
    )
    parser.add_argument("--users", type=int, default=FULL_USERS, help="synthetic users (default: %(default)s)")
    parser.add_argument("--items", type=int, default=FULL_ITEMS, help="synthetic items (default: %(default)s)")
    parser.add_argument("--sessions", type=float, default=5.0, help="mean sessions per user (default: %(default)s)")
    parser.add_argument(
        "--session-length", type=float, default=10.0, help="mean plays per session (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="synthetic world seed (default: %(default)s)")
    parser.add_argument("--als-iterations", type=int, default=3, help="ALS iterations (default: %(default)s)")
    parser.add_argument("--bpr-epochs", type=int, default=2, help="BPR epochs (default: %(default)s)")
    parser.add_argument("--models", default="als,bpr", help="comma-separated subset of als,bpr (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device for the models (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the results (default: %(default)s)")
    parser.add_argument("--worker", choices=("generate", "als", "bpr"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not set(models) <= {"als", "bpr"}:
        parser.error(f"--models takes als and/or bpr, got {args.models!r}")
    if min(args.users, args.items, args.als_iterations, args.bpr_epochs) < 1:
        parser.error("--users, --items, --als-iterations and --bpr-epochs must be >= 1")
    args.model_list = models
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        if args.data is None or args.result is None:
            raise SystemExit("--worker needs --data and --result")
        found = worker_generate(args) if args.worker == "generate" else worker_model(args)
        args.result.write_text(json.dumps(found))
        return 0

    full_size = (args.users, args.items, args.sessions, args.session_length) == (FULL_USERS, FULL_ITEMS, 5.0, 10.0)
    load_start = load_average()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="recsys-scale-") as tmp:
        data = Path(tmp) / "pairs.npz"
        gen = run_worker("generate", args, data, Path(tmp) / "generate.json")
        log(
            f"generate: {gen['plays']:,} plays, {gen['pairs']:,} pairs in {gen['seconds']:.1f} s, "
            f"peak RSS {gen['peak_rss_mib']:,.0f} MiB"
        )
        models = []
        for name in args.model_list:
            found = run_worker(name, args, data, Path(tmp) / f"{name}.json")
            log(
                f"{name}: {found['median_step_s']:.2f} s/step (median of {len(found['step_s'])}), setup "
                f"{found['setup_s']:.2f} s, peak RSS {found['peak_rss_mib']:,.0f} MiB"
            )
            models.append(found)

    meta: dict[str, Any] = {
        "date": now_utc(),
        "full_size": full_size,
        "device": args.device,
        "machine": machine(),
        "versions": versions(("torch", "numpy", "scipy", "pandas")),
        "git": git_revision(),
        "load_start": load_start,
        "load_end": load_average(),
        "wall_s": time.perf_counter() - started,
    }
    markdown = render(meta, gen, models)
    payload = {**meta, "generate": gen, "models": models}
    md_path, json_path = write_results(args.out, "scale" if full_size else "scale-small", markdown, payload)
    print(markdown)
    log(f"wrote {md_path} and {json_path} ({meta['wall_s']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
