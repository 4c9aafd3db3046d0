"""What the live fold-in costs: on the request path (the lookup with live listeners vs without), off it (one
refold per listener with new plays), and end to end (a click's 202 until the next recommendation reflects it).

    .venv/bin/python -m benchmarks.fold_in           # results/fold_in.{md,json}
    .venv/bin/python -m benchmarks.fold_in --quick   # 2,000 x 5,000 world, 3 trials: results/fold_in-quick.*
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.harness.facts import RESULTS_DIR, load_average, machine, machine_line, now_utc
from benchmarks.harness.tables import markdown_table, write_results
from recsys.stack.local import LocalStack, StackConfig, StackPorts
from serving.fold_in import FoldIn, LivePlays
from serving.lookup import UserLookup
from trainer.artifacts import load_run
from trainer.data.synthetic import SyntheticConfig, generate
from trainer.export import export_all
from trainer.pipeline import save_result, train_and_evaluate
from trainer.triton.publish import publish


def _timed(call: Any, repeats: int) -> float:
    """Median microseconds of ``call()``."""
    samples = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        samples.append(time.perf_counter() - began)
    return statistics.median(samples) * 1e6


def in_process(run_dir: Path, rng: np.random.Generator) -> dict[str, float]:
    run = load_run(run_dir)
    export_all(run.model, run.history, run_dir)  # type: ignore[arg-type]
    lookup = UserLookup(run_dir)
    known = str(run.user_ids.ids[0])
    figures = {"lookup_us_live_off": _timed(lambda: lookup([known]), 2000)}
    fold_in = FoldIn(run_dir / "fold_in.npz")
    lookup.live = LivePlays(fold_in, lookup.training_plays(), lookup.width)
    n_items = run.history.shape[1]
    lookup.live.add([(f"live-{u}", int(i)) for u in range(10_000) for i in rng.integers(0, n_items, 3)])
    figures["lookup_us_live_on_known_listener"] = _timed(lambda: lookup([known]), 2000)
    figures["lookup_us_live_on_live_listener"] = _timed(lambda: lookup(["live-7"]), 2000)
    for plays in (5, 50, 500):
        items = rng.choice(n_items, size=min(plays, n_items), replace=False).astype(np.int64)
        counts = np.ones(len(items))
        figures[f"refold_us_{plays}_plays"] = _timed(
            lambda items=items, counts=counts: fold_in.vector(items, counts), 500
        )
    return figures


def end_to_end(stack: LocalStack, trials: int) -> list[float]:
    """Seconds from a click's 202 until the listener's next recommendation excludes the clicked item."""
    delays = []
    with httpx.Client(base_url=stack.gateway_url, timeout=10) as client:
        for _ in range(trials):
            user = f"fresh-{uuid.uuid4().hex[:8]}"
            shown = client.post("/recommend", json={"user_id": user, "top_k": 10}).json()
            item = shown["recommended_items"][0]["item_id"]
            ack = client.post("/feedback", json={"user_id": user, "group": shown["group"],
                                                 "request_id": shown["request_id"], "clicked_item": item})  # fmt: skip
            assert ack.status_code == 202
            acked = time.perf_counter()
            while True:
                body = client.post("/recommend", json={"user_id": user, "top_k": 10}).json()
                if not body["fallback"] and item not in {i["item_id"] for i in body["recommended_items"]}:
                    break
                if time.perf_counter() - acked > 10:
                    raise RuntimeError("a click was not folded in within 10 s")
            delays.append(time.perf_counter() - acked)
    return delays


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, help="new listeners clicking (default 20; --quick 3)")
    parser.add_argument("--quick", action="store_true", help="2,000 x 5,000 world, 3 trials: fold_in-quick.*")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    args.trials = args.trials or (3 if args.quick else 20)
    users, items = (2_000, 5_000) if args.quick else (20_000, 50_000)
    world = generate(SyntheticConfig(n_users=users, n_items=items, n_genres=20, seed=0))
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="fold-in-") as tmp:
        work = Path(tmp)
        run_dir = work / "run"
        save_result(train_and_evaluate(world.interactions, "als", {"iterations": 4, "seed": 0}), run_dir)
        figures = in_process(run_dir, np.random.default_rng(0))
        publish(run_dir, work / "repository")
        config = StackConfig(model_repository=work / "repository", workdir=work / "stack", ports=StackPorts.free())
        with LocalStack(config) as stack:
            delays = end_to_end(stack, args.trials)
    figures["click_to_personal_s_median"] = statistics.median(delays)
    figures["click_to_personal_s_max"] = max(delays)
    added = figures["lookup_us_live_on_live_listener"] - figures["lookup_us_live_off"]
    rows = [[name, f"{value:,.1f}"] for name, value in figures.items()]
    markdown = "\n".join([
        f"# Live fold-in: cost and freshness ({now_utc()})", "",
        f"ALS (64 factors) on a synthetic world of {users:,} listeners x {items:,} items; the lookup as served "
        "(`serving.fold_in`), one listener per call, 10,000 live listeners held; refolds on random plays.", "",
        markdown_table(["figure", "value (us, or s where named)"], rows), "",
        f"Added latency on the request path for a live listener: **{added:.1f} us** (goal <= 1 ms). A refold is "
        "done off the request path, by the poller thread, once per listener with new plays.",
        "A click reaches the served recommendations after a median of "
        f"**{figures['click_to_personal_s_median']:.2f} s** "
        f"(max {figures['click_to_personal_s_max']:.2f} s over {args.trials} new listeners): the writer's batch "
        "interval, the lookup's 100 ms poll, and the gateway round trips of this measuring loop.",
        machine_line(load_before), "",
    ])  # fmt: skip
    write_results(
        args.out,
        "fold_in-quick" if args.quick else "fold_in",
        markdown,
        {"figures": figures, "delays_s": delays, "machine": machine()},
    )
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
