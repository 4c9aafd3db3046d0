"""Peak memory and time of publishing a large factor model: ``trainer.triton.publish.publish`` of an ALS run with
random factors (no fit: the shapes matter, not the quality), ``--users`` listeners with ``--plays`` plays each.

The run is written once into ``--work`` (reused when there), then publish runs in a child process under
``/usr/bin/time -v``, so the peak RSS is publish's alone (export, parity, fold-in data, copies, checksums). The
approximate index is off by default (``--ann none``): ``trainer.ann``'s build is measured by catalog_scale.

    python -m benchmarks.publish_memory --items 10000000 --users 1000000 --work /tmp/publish-10m
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.harness.running import say


def make_run(run_dir: Path, users: int, items: int, factors: int, plays: int, seed: int) -> None:
    """An ALS run of random factors and ``plays`` distinct random items per user (a CSR built without fitting)."""
    import torch

    from trainer.artifacts import save_run
    from trainer.data.interactions import Interactions
    from trainer.models.als import ALS, ALSParams
    from trainer.weighting import CorpusStats

    rng = np.random.default_rng(seed)
    codes = np.unique(
        np.repeat(np.arange(users, dtype=np.int64), plays) * items + rng.integers(0, items, users * plays)
    )
    data = Interactions.from_codes(codes, users, items)
    model = ALS(ALSParams(factors=factors, seed=seed))
    gen = torch.Generator().manual_seed(seed)
    model.user_factors = torch.randn(users, factors, generator=gen) * 0.1
    model.item_factors = torch.randn(items, factors, generator=gen) * 0.1
    model.item_bias = None
    model.n_users, model.n_items = users, items
    model.corpus = CorpusStats.of(data.to_csr())
    save_run(run_dir, model, data, {"model": "als", "note": "benchmarks.publish_memory: random factors"})


def trace_rss(every_s: float = 0.5, step_gib: float = 0.25) -> None:
    """Logs this process's RSS whenever it moved by ``step_gib`` (a daemon thread): with publish's own log lines,
    which step holds the peak."""
    page = os.sysconf("SC_PAGE_SIZE")

    def sample() -> None:
        last = 0.0
        while True:
            rss = int(Path("/proc/self/statm").read_text().split()[1]) * page / 2**30
            if abs(rss - last) >= step_gib:
                logging.getLogger("rss").info("%.2f GiB", rss)
                last = rss
            time.sleep(every_s)

    threading.Thread(target=sample, daemon=True).start()


def publish_child(run_dir: Path, repository: Path, ann: str) -> None:
    """What the measured child process runs (its log, with the RSS trace, goes to stderr)."""
    from trainer.ann import AnnPolicy
    from trainer.triton.publish import publish

    logging.basicConfig(level=logging.INFO, format="%(relativeCreated)8.0f ms %(name)s: %(message)s")
    for noisy in ("torch", "onnxscript", "onnx_ir", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    trace_rss()
    began = time.perf_counter()
    published = publish(run_dir, repository, ann=AnnPolicy(kind=ann, sample_users=50))
    print(json.dumps({"version": published.version, "publish_s": round(time.perf_counter() - began, 1)}))


def measure(run_dir: Path, repository: Path, ann: str) -> dict[str, object]:
    """Publish under ``/usr/bin/time -v`` in a fresh interpreter: its peak RSS and times."""
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "benchmarks.publish_memory", "--child"]
    command += ["--run", str(run_dir), "--repository", str(repository), "--ann", ann]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    (repository.parent / "publish.log").write_text(done.stderr)  # the child's log and RSS trace, then time -v
    if done.returncode != 0:
        raise SystemExit(f"publish failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    stats = dict(re.findall(r"^\s*(.+?): (.+)$", done.stderr, flags=re.MULTILINE))
    child = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "peak_rss_gib": round(int(stats["Maximum resident set size (kbytes)"]) / 2**20, 2),
        "wall": stats["Elapsed (wall clock) time (h:mm:ss or m:ss)"],
        "user_s": float(stats["User time (seconds)"]),
        "system_s": float(stats["System time (seconds)"]),
        **child,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--plays", type=int, default=10, help="distinct random items per user")
    parser.add_argument("--ann", default="none", help="index kind publish builds (none, flat, ...)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/publish-memory"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--repository", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        publish_child(args.run, args.repository, args.ann)
        return
    run_dir = args.work / f"run-{args.users}x{args.items}x{args.factors}"
    if not (run_dir / "metrics.json").exists():
        say(f"writing a random-factor run: {args.users:,} users x {args.items:,} items x {args.factors} ...")
        began = time.perf_counter()
        make_run(run_dir, args.users, args.items, args.factors, args.plays, args.seed)
        say(f"run written in {time.perf_counter() - began:.0f} s")
    repository = args.work / "repository"
    shutil.rmtree(repository, ignore_errors=True)
    say("publishing under /usr/bin/time -v ...")
    figures = measure(run_dir, repository, args.ann)
    inodes = {(p.stat().st_dev, p.stat().st_ino): p.stat().st_size for p in repository.rglob("*") if p.is_file()}
    size = sum(inodes.values())  # a hard-linked file counts once
    disk = {"repository_gib": round(size / 2**30, 2)}
    print(json.dumps({"users": args.users, "items": args.items, "factors": args.factors, **figures, **disk}))
    shutil.rmtree(repository, ignore_errors=True)


if __name__ == "__main__":
    main()
