"""The live fold-in poller's item id -> column map: a dict of Python strings against ``serving.lookup.SortedIds``
(binary search over the ids sorted once), side by side in one process, at 1M and 10M items.

For each size and id kind (integers as ``catalog_scale`` publishes them; text like ``track-00001234``), both are
built from the array ``ids.npz`` holds: build seconds, memory (tracemalloc's peak and what stays allocated, in a
second build: tracing slows a dict's build), and the median microseconds of one ``get`` of a stored id and of an
unknown one (the poller looks up each new click or play).

    .venv/bin/python -m benchmarks.id_index                     # results/id_index.{md,json}
    .venv/bin/python -m benchmarks.id_index --sizes 100000      # a quick look
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.harness.facts import RESULTS_DIR, load_average, machine_line, now_utc, run_header
from benchmarks.harness.running import int_list, say
from benchmarks.harness.tables import fmt, markdown_table, write_results
from serving.lookup import SortedIds, id_dict

BUILDERS: dict[str, Callable[[npt.NDArray[Any]], Any]] = {"dict": id_dict, "SortedIds": SortedIds}


def named(kind: str, numbers: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
    """Item ids as ``ids.npz`` would hold them: the numbers themselves, or text like ``track-00001234``."""
    return numbers if kind == "int" else np.char.add("track-", np.char.zfill(numbers.astype(str), 8))


def _get_us(index: Any, keys: list[str]) -> float:
    samples = []
    for key in keys:
        began = time.perf_counter()
        index.get(key)
        samples.append(time.perf_counter() - began)
    return statistics.median(samples) * 1e6


def measure(builder: str, ids: npt.NDArray[Any], keys: list[str], misses: list[str]) -> dict[str, float]:
    build = BUILDERS[builder]
    gc.collect()
    began = time.perf_counter()
    index = build(ids)
    figures = {"build_s": time.perf_counter() - began}
    figures["hit_us"], figures["miss_us"] = _get_us(index, keys), _get_us(index, misses)
    if any(index.get(k) is None for k in keys[:100]) or index.get(misses[0]) is not None:
        raise RuntimeError(f"{builder} answered wrongly")
    del index
    gc.collect()
    tracemalloc.start()
    index = build(ids)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    figures["held_mib"], figures["peak_mib"] = held / 2**20, peak / 2**20
    del index
    return figures


def render(payload: dict[str, Any]) -> str:
    rows = []
    for row in payload["rows"]:
        base = next(r for r in payload["rows"] if r["items"] == row["items"] and r["ids"] == row["ids"])
        rows.append(
            [
                f"{row['items']:,}", row["ids"], f"`{row['builder']}`", fmt(row["build_s"]),
                f"{row['held_mib']:,.0f}", f"{row['peak_mib']:,.0f}", fmt(row["hit_us"]), fmt(row["miss_us"]),
                fmt(base["build_s"] / row["build_s"]), fmt(base["held_mib"] / max(row["held_mib"], 1e-9)),
            ]
        )  # fmt: skip
    header = payload["header"]
    return "\n".join(
        [
            "# Item id -> column: dict vs SortedIds (id_index)",
            "",
            f"{header['finished_at']}, git {header['git']}, {payload['machine_line']}",
            "",
            "Built from the id array as `ids.npz` holds it; memory by tracemalloc in a second build (what stays "
            "allocated, and the peak during the build); `get` is the median of one call over "
            f"{payload['lookups']:,} stored and as many unknown ids. *x dict*: the dict's build time or memory over "
            "this row's (the dict's own row is 1).",
            "",
            markdown_table(
                [
                    "items",
                    "ids",
                    "map",
                    "build s",
                    "held MiB",
                    "peak MiB",
                    "get stored us",
                    "get unknown us",
                    "build x dict",
                    "memory x dict",
                ],
                rows,
            ),
            "",
        ]
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.id_index", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int_list, default=[1_000_000, 10_000_000], help="items per size")
    parser.add_argument("--lookups", type=int, default=10_000, help="stored (and unknown) ids looked up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--stem", default="id_index")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started, load = now_utc(), load_average()
    rng = np.random.default_rng(args.seed)
    rows = []
    for n in args.sizes:
        for kind in ("int", "text"):
            ids = named(kind, np.random.default_rng(args.seed).permutation(n).astype(np.int64))
            keys = [str(i) for i in ids[rng.integers(0, n, args.lookups)].tolist()]
            misses = [
                str(i) for i in named(kind, np.arange(n, n + args.lookups, dtype=np.int64)).tolist()
            ]  # none stored
            for builder in BUILDERS:
                figures = measure(builder, ids, keys, misses)
                say(f"{n:,} {kind} ids, {builder}: " + ", ".join(f"{k} {v:,.2f}" for k, v in figures.items()))
                rows.append({"items": n, "ids": kind, "builder": builder, **figures})
    payload = {
        "header": run_header("id_index", "full", started, load, ("numpy",)),
        "machine_line": machine_line(load),
        "lookups": args.lookups,
        "rows": rows,
    }
    md, _ = write_results(args.out, args.stem, render(payload), payload)
    print(render(payload))
    say(f"wrote {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
