"""The published model repository on a GPU: what ``recsys publish`` writes, served as the gpu flavour and measured.

For each catalogue size (default 1M and 10M items, 64 factors):

1. a synthetic BPR run with random factors and an item bias (``trainer.artifacts.save_run``; the scores are
   meaningless, the shapes, files and serving path are the real ones), 200k listeners with ~24 plays each drawn
   from a power-law popularity (so the fallback column holds real counts);
2. ``recsys render-repo --flavour gpu`` and ``recsys publish RUN --repository REPO`` as subprocesses: the CLI,
   exports, parity and files exactly as a user gets them;
3. the in-process floor: the version's :class:`serving.gpu.DeviceScorer` on the device (one query, batches of 64
   and 256) and the device's copy bandwidth, hence the HBM bound: the bytes of one fp16 scoring pass over the items
   / that bandwidth;
4. the real ``tritonserver`` on that repository (explicit model control: recsys_lookup, both scorers, recsys_topk,
   recsys_fused, recsys_a, recsys_b);
5. served parity: 200 listeners through recsys_a, recsys_b and recsys_fused against the published TorchScript
   file run on the CPU in this process (ids, and scores to 1e-5);
6. perf_analyzer over gRPC at concurrency 1, 16, 64, 256 for recsys_a, recsys_b, the TorchScript scorer alone
   (fed the lookup's rows) and recsys_fused;
7. with ``--variants`` (e.g. ``s1=scorer:1;s4=scorer:4,host:8;d200=delay:200``, no spaces), the same repository
   again with other instance counts, queue delays or max batch (:class:`Variant`), for ``--variant-models`` at
   ``--variant-concurrency``: how ``trainer/triton/gpu.py``'s counts are tuned by measurement.

Results (``gpu_serving.{json,md}``) are rewritten after every catalogue, so a run stopped by its time budget keeps
what it measured. ``--device cpu`` runs the same thing on CPU instances (the device scorer code on CPU torch, fp32)
with a tiny catalogue: the end-to-end test of this script before any GPU time is spent.

The server and perf_analyzer come either from the installed nvidia-pytriton (here) or from the bundle that
``benchmarks/gpu_bundle.sh`` builds and ``benchmarks/gpu_triton.sh`` unpacks (the GPU machine has no network).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.harness.perf_analyzer import Measurement, PerfAnalyzer, PerfRun, run_perf_analyzer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STUB = "triton_python_backend_stub"
SHM_PREFIX = "triton_python_backend_shm_region_"
LOOKUP, SCORER_TS, SCORER_ONNX, TOPK, FUSED = (
    "recsys_lookup",
    "recsys_scorer_torchscript",
    "recsys_scorer_onnx",
    "recsys_topk",
    "recsys_fused",
)
ENSEMBLE_A, ENSEMBLE_B = "recsys_a", "recsys_b"
SERVED = (LOOKUP, SCORER_TS, SCORER_ONNX, TOPK, FUSED, ENSEMBLE_A, ENSEMBLE_B)
MEASURED = (ENSEMBLE_A, ENSEMBLE_B, SCORER_TS, FUSED)
TOP_K = 10
PARITY_USERS = 200
GOAL_THROUGHPUT_C64 = 30_000.0
GOAL_P50_C1_MS = 0.5

_T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.monotonic() - _T0:5.0f}s] {message}", flush=True)


# ------------------------------------------------------------------------------------------------ catalogue


def make_run(run_dir: Path, items: int, users: int, factors: int, plays: int, seed: int) -> dict[str, Any]:
    """A BPR run with random factors, saved by the project's own ``save_run``."""
    import torch

    from trainer.artifacts import save_run
    from trainer.data.interactions import Interactions
    from trainer.models.bpr import BPR, BPRParams

    began = time.perf_counter()
    rng = np.random.default_rng(seed)
    user_index = np.repeat(np.arange(users, dtype=np.int64), rng.poisson(plays, users) + 1)
    # Power-law popularity: item i drawn with weight ~ 1 / (i + 10); shuffled so popular items are spread out.
    ranks = np.minimum((rng.pareto(1.0, len(user_index)) * 10).astype(np.int64), items - 1)
    item_index = rng.permutation(items)[ranks]
    pairs = np.unique(user_index * items + item_index)
    data = Interactions.from_codes(pairs, users, items)
    params = BPRParams(factors=factors, seed=seed)
    model = BPR(params)
    gen = torch.Generator().manual_seed(seed)
    model.user_factors = torch.randn(users, factors, generator=gen) * 0.1
    model.item_factors = torch.randn(items, factors, generator=gen) * 0.1
    model.item_bias = torch.randn(items, generator=gen) * 0.01
    model.n_users, model.n_items = users, items
    metrics = {"model": "bpr", "params": params.to_dict(), "note": "benchmarks.gpu_serving: random factors"}
    save_run(run_dir, model, data, metrics)
    width = int(np.bincount(data.users, minlength=users).max())
    return {"pairs": len(pairs), "exclude_width": width, "seconds": time.perf_counter() - began}


def recsys(*args: str, log: Path) -> float:
    """``python -m recsys ARGS`` (the CLI a user runs); its output goes to ``log``; returns seconds."""
    began = time.perf_counter()
    with log.open("a") as sink:
        sink.write(f"$ recsys {' '.join(args)}\n")
        sink.flush()
        done = subprocess.run(
            [sys.executable, "-m", "recsys", *args], cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, check=False
        )
    if done.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise SystemExit(f"recsys {' '.join(args)} failed ({done.returncode}):\n{tail}")
    return time.perf_counter() - began


def cpu_instances(repository: Path) -> None:
    """CPU mode: every KIND_GPU instance of the rendered gpu flavour becomes a CPU instance that still runs the
    device scorer (``device_scorer=true``), so the GPU code path is what the CPU test serves."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    for path in sorted(repository.glob("*/config.pbtxt")):
        config = text_format.Parse(path.read_text(), mc.ModelConfig())
        if not any(g.kind == mc.ModelInstanceGroup.KIND_GPU for g in config.instance_group):
            continue
        for group in config.instance_group:
            group.kind = mc.ModelInstanceGroup.KIND_CPU
            group.count = 1
        config.parameters["device_scorer"].string_value = "true"
        path.write_text(text_format.MessageToString(config))


def instance_groups(repository: Path) -> dict[str, str]:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    out = {}
    for model in SERVED:
        config = text_format.Parse((repository / model / "config.pbtxt").read_text(), mc.ModelConfig())
        groups = ", ".join(f"{g.count}x{mc.ModelInstanceGroup.Kind.Name(g.kind)}" for g in config.instance_group)
        out[model] = f"{groups or 'ensemble'}; max_batch {config.max_batch_size}"
    return out


@dataclass(frozen=True)
class Requests:
    user_ids: list[str]
    vectors: npt.NDArray[np.float32]
    exclude: npt.NDArray[np.int64]


def sample_requests(version_dir: Path, n: int, seed: int) -> Requests:
    """``n`` known listeners with what the lookup would send the scorer for them (row, padded exclusions)."""
    with np.load(version_dir / "ids.npz", allow_pickle=False) as npz:
        users = npz["user_ids"]
    with np.load(version_dir / "history.npz", allow_pickle=False) as npz:
        indptr, indices = npz["indptr"].astype(np.int64), npz["indices"].astype(np.int64)
    width = max(int(np.diff(indptr).max()), 1)
    chosen = np.sort(np.random.default_rng(seed).choice(len(users), size=min(n, len(users)), replace=False))
    exclude = np.full((len(chosen), width), -1, dtype=np.int64)
    for row, user in enumerate(chosen.tolist()):
        heard = indices[indptr[user] : indptr[user + 1]]
        exclude[row, : len(heard)] = heard
    vectors = np.load(version_dir / "users.npy", mmap_mode="r")[chosen]
    return Requests([str(u) for u in users[chosen].tolist()], np.ascontiguousarray(vectors), exclude)


def input_files(requests: Requests, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    by_id = {"data": [{"USER_ID": [uid], "TOP_K": [TOP_K]} for uid in requests.user_ids]}
    width = int(requests.exclude.shape[1])
    by_row = {
        "data": [
            {
                "USER_VECTOR": {"content": vector.tolist(), "shape": [len(vector)]},
                "EXCLUDE": {"content": row.tolist(), "shape": [width]},
                "TOP_K": [TOP_K],
            }
            for vector, row in zip(requests.vectors, requests.exclude, strict=True)
        ]
    }
    paths = {"by_id": folder / "by_user_id.json", "by_row": folder / "by_user_row.json"}
    paths["by_id"].write_text(json.dumps(by_id))
    paths["by_row"].write_text(json.dumps(by_row))
    return paths


# ------------------------------------------------------------------------------------------------ floor


def device_floor(version_dir: Path, device: str, requests: Requests) -> dict[str, Any]:
    """The version's DeviceScorer in this process (no Triton) and the device's copy bandwidth."""
    import torch

    from serving.gpu import DeviceScorer

    scorer = DeviceScorer.load(version_dir, "torchscript", device, precision="fp16")
    dev = torch.device(device)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    out: dict[str, Any] = {"device": device, "precision": scorer.precision, "width": scorer.width}
    for batch in (1, 64, 256):
        rows = np.resize(np.arange(len(requests.user_ids)), batch)
        arrays = (requests.vectors[rows], requests.exclude[rows], np.full((batch, 1), TOP_K, np.int64))
        for _ in range(3):
            scorer(*arrays)
        times = []
        for _ in range(30 if batch == 1 else 10):
            sync()
            began = time.perf_counter()
            scorer(*arrays)
            sync()
            times.append(time.perf_counter() - began)
        times.sort()
        out[f"batch_{batch}_ms"] = times[len(times) // 2] * 1e3
        out[f"batch_{batch}_us_per_query"] = times[len(times) // 2] * 1e6 / batch
    out["full_fp32_rows"] = scorer.stats["full_rows"]
    pass_bytes = (scorer.n_items + 1) * scorer.width * (2 if scorer.scaled is not None else 4)
    out["pass_bytes"] = pass_bytes
    out["held_bytes"] = scorer.device_bytes
    size = (1 << 30) if dev.type == "cuda" else (1 << 27)
    src = torch.ones(size // 4, dtype=torch.float32, device=dev)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(10):
        sync()
        began = time.perf_counter()
        dst.copy_(src)
        sync()
        best = min(best, time.perf_counter() - began)
    out["copy_gbs_read_plus_write"] = 2 * size / best / 1e9
    out["hbm_bound_us_per_pass"] = pass_bytes / (out["copy_gbs_read_plus_write"] * 1e9) * 1e6
    if dev.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(dev)
    del scorer, src, dst
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


# ------------------------------------------------------------------------------------------------ server


@dataclass(frozen=True)
class TritonBits:
    binary: Path
    backend_dir: Path
    cache_dir: Path
    libs: Path


def triton_bits(root: Path, work: Path) -> TritonBits:
    """``root`` holds ``pytriton/tritonserver`` and ``nvidia_pytriton.libs`` (site-packages or the unpacked bundle);
    lays out ``work/backends/python`` with the stub of this Python."""
    dist = root / "pytriton" / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / STUB
    if not stub.is_file():
        raise SystemExit(f"no python backend stub for Python {version} under {dist}")
    target = work / "backends" / "python"
    target.mkdir(parents=True, exist_ok=True)
    backend = dist / "backends" / "python"
    for src in (backend / "libtriton_python.so", backend / "triton_python_backend_utils.py", stub):
        dst = target / src.name
        dst.unlink(missing_ok=True)
        dst.symlink_to(src)
    return TritonBits(dist / "bin" / "tritonserver", work / "backends", dist / "caches", root / "nvidia_pytriton.libs")


def perf_analyzer_at(binary: Path, libs: Path, work: Path) -> PerfAnalyzer:
    lib_dir = work / "pa_lib"
    lib_dir.mkdir(parents=True, exist_ok=True)
    for want, pattern in (("libb64.so.0d", "libb64-*.so.0d"), ("libcudart.so.12", "libcudart-*.so.12*")):
        found = sorted(libs.glob(pattern))
        if not found:
            raise SystemExit(f"no {pattern} in {libs}")
        link = lib_dir / want
        link.unlink(missing_ok=True)
        link.symlink_to(found[0])
    analyzer = PerfAnalyzer(binary=binary, lib_dir=lib_dir)
    say(f"perf_analyzer {analyzer.version()}")
    return analyzer


def free_ports(n: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    http: int
    grpc: int
    metrics: int

    def call(self, path: str, body: bytes | None = None, timeout: float = 60) -> tuple[int, bytes]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", data=body)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=timeout) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()
        except OSError:
            return 0, b""

    def states(self) -> dict[str, str]:
        status, body = self.call("/v2/repository/index", b"{}")
        if status != 200:
            return {}
        return {str(e["name"]): f"{e.get('state')} {e.get('reason', '')}".strip() for e in json.loads(body)}


@contextlib.contextmanager
def tritonserver(
    bits: TritonBits, repository: Path, device: str, numpy_dir: Path | None, log: Path, ready_timeout_s: float
) -> Iterator[Server]:
    http, grpc, metrics = free_ports(3)
    shm_prefix = f"{SHM_PREFIX}gpuserving_{os.getpid()}_"
    env = dict(os.environ)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    libdirs = [str(bits.libs), str(sysconfig.get_config_var("LIBDIR") or ""), "/usr/lib/x86_64-linux-gnu"]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in [*libdirs, env.get("LD_LIBRARY_PATH", "")] if p)
    # The stubs import serving.* from this checkout; numpy < 2 first (python-model outputs are empty with 2.x).
    paths = [str(numpy_dir)] if numpy_dir is not None else []
    env["PYTHONPATH"] = os.pathsep.join(p for p in [*paths, str(ROOT), env.get("PYTHONPATH", "")] if p)
    command = [
        str(bits.binary),
        f"--model-repository={repository}",
        f"--backend-directory={bits.backend_dir}",
        f"--cache-directory={bits.cache_dir}",
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
        f"--http-port={http}",
        f"--grpc-port={grpc}",
        f"--metrics-port={metrics}",
        "--model-control-mode=explicit",
        *[f"--load-model={m}" for m in SERVED],
        "--exit-on-error=false",
        "--backend-config=python,shm-default-byte-size=16777216",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
    ]
    if device == "cpu":
        command += ["--pinned-memory-pool-byte-size=0", "--allow-gpu-metrics=false"]
    say("tritonserver " + " ".join(command[1:]))
    with log.open("ab") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL, start_new_session=True
        )
    server = Server(process, http, grpc, metrics)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while server.call("/v2/health/ready", timeout=5)[0] != 200:
            if process.poll() is not None:
                raise SystemExit(f"tritonserver exited ({process.returncode}); see {log}")
            states = server.states()
            if set(SERVED) <= set(states) and not any(s.startswith("LOADING") for s in states.values()):
                break  # every model settled, some failed (not ready): the caller reports which
            if time.monotonic() > deadline:
                raise SystemExit(f"tritonserver not ready after {ready_timeout_s:g} s ({states}); see {log}")
            time.sleep(1.0)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        for region in Path("/dev/shm").glob(f"{shm_prefix}*"):
            region.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ parity


def infer_by_id(server: Server, model: str, user_ids: Sequence[str]) -> tuple[list[list[str]], npt.NDArray[Any]]:
    """ITEM_IDS and SCORES for ``user_ids`` (HTTP/JSON, batches of 64 rows)."""
    ids: list[list[str]] = []
    scores: list[npt.NDArray[Any]] = []
    for start in range(0, len(user_ids), 64):
        chunk = list(user_ids[start : start + 64])
        body = {
            "inputs": [
                {"name": "USER_ID", "shape": [len(chunk), 1], "datatype": "BYTES", "data": chunk},
                {"name": "TOP_K", "shape": [len(chunk), 1], "datatype": "INT64", "data": [TOP_K] * len(chunk)},
            ],
            "outputs": [{"name": "ITEM_IDS"}, {"name": "SCORES"}],
        }
        status, raw = server.call(f"/v2/models/{model}/infer", json.dumps(body).encode())
        if status != 200:
            raise RuntimeError(f"{model}: HTTP {status}: {raw[:300]!r}")
        outputs = {o["name"]: o for o in json.loads(raw)["outputs"]}
        width = outputs["ITEM_IDS"]["shape"][1]
        flat = outputs["ITEM_IDS"]["data"]
        ids += [flat[i * width : (i + 1) * width] for i in range(len(chunk))]
        scores.append(np.asarray(outputs["SCORES"]["data"], dtype=np.float64).reshape(len(chunk), -1))
    return ids, np.concatenate(scores)


def served_parity(server: Server, scorer_dir: Path, lookup_dir: Path, requests: Requests) -> dict[str, Any]:
    """recsys_a, recsys_b and recsys_fused against the published TorchScript file on the CPU, same listeners.

    Ids must be identical, except where the reference itself has two scores within 1e-5 (a near-tie whose order
    is not defined across devices): such rows are counted apart, never hidden."""
    import torch

    from serving.gpu import load_weights

    items_t, bias, n_items = load_weights(scorer_dir, "torchscript")
    requests = Requests(
        requests.user_ids[:PARITY_USERS], requests.vectors[:PARITY_USERS], requests.exclude[:PARITY_USERS]
    )
    parts = []
    with torch.inference_mode():
        for start in range(0, len(requests.user_ids), 25):  # 25 rows x 10M items of fp32 scores: 1 GB at a time
            rows = slice(start, start + 25)
            scores = torch.addmm(bias, torch.from_numpy(requests.vectors[rows]), items_t)
            columns = torch.from_numpy(np.where(requests.exclude[rows] >= 0, requests.exclude[rows], n_items))
            scores.scatter_(1, columns, -torch.inf)
            parts.append(torch.topk(scores, min(TOP_K, n_items), dim=1))
    ref_scores = torch.cat([p[0] for p in parts]).numpy()
    ref_items = torch.cat([p[1] for p in parts]).numpy()
    with np.load(lookup_dir / "ids.npz", allow_pickle=False) as npz:
        item_ids = npz["item_ids"]
    ref_ids = [[str(item_ids[i]) for i in row] for row in ref_items.tolist()]
    near_tie = (np.abs(np.diff(ref_scores, axis=1)) <= 1e-5).any(axis=1)
    out: dict[str, Any] = {"users": len(ref_ids)}
    for model in (ENSEMBLE_A, ENSEMBLE_B, FUSED):
        try:
            ids, got = infer_by_id(server, model, requests.user_ids)
        except RuntimeError as exc:
            out[model] = {"error": str(exc)}
            continue
        same = np.array([a == b for a, b in zip(ids, ref_ids, strict=True)])
        out[model] = {
            "rows_identical": int(same.sum()),
            "rows_differing_at_near_tie": int((~same & near_tie).sum()),
            "rows_differing": int((~same & ~near_tie).sum()),
            "max_abs_score_diff": float(np.abs(got - ref_scores).max()),
        }
    return out


# ------------------------------------------------------------------------------------------------ one size


def _measurement(args: argparse.Namespace) -> Measurement:
    return Measurement(
        mode="time_windows", interval_ms=args.interval_ms, stability_percentage=args.stability, max_trials=args.trials
    )


def measure_models(
    args: argparse.Namespace,
    analyzer: PerfAnalyzer,
    server: Server,
    models: Sequence[str],
    concurrency: Sequence[int],
    work: Path,
    files: dict[str, Path],
    result: dict[str, Any],
    tag: str,
) -> None:
    """perf_analyzer on each model at each level into ``result["runs"]``; levels with no stable window are measured
    once more with every window accepted, and listed in ``result["unstable_levels"]``."""
    states = server.states()
    runs: list[PerfRun] = []
    for model in models:
        if not states.get(model, "").startswith("READY"):
            say(f"[{tag}] skipping {model}: {states.get(model)}")
            continue
        if time.monotonic() > args.deadline:
            say(f"[{tag}] out of time budget: {model} not measured")
            break
        common: dict[str, Any] = {
            "work_dir": work / "perf_analyzer",
            "input_data": files["by_row"] if model == SCORER_TS else files["by_id"],
            "timeout_s": args.pa_timeout,
            "log": say,
        }
        url = f"127.0.0.1:{server.grpc}"
        run = run_perf_analyzer(analyzer, model, url, concurrency=concurrency, measurement=_measurement(args), **common)
        unstable = [c for c, why in run.failures.items() if "stable" in why]
        if unstable:
            say(f"[{tag}] {model}: no stable measurement at {unstable}; once more without the stability rule")
            relaxed = Measurement(mode="time_windows", interval_ms=args.interval_ms, stability_percentage=1000.0,
                                  max_trials=3)  # fmt: skip
            again = run_perf_analyzer(analyzer, model, url, concurrency=unstable, measurement=relaxed, **common)
            run = dataclasses.replace(
                run,
                rows=tuple(sorted((*run.rows, *again.rows), key=lambda r: r.concurrency)),
                failures={c: w for c, w in run.failures.items() if again.row(c) is None},
            )
            result.setdefault("unstable_levels", {})[model] = [c for c in unstable if again.row(c) is not None]
        runs.append(run)
        result["runs"] = [r.to_json() for r in runs]
        args.save()  # a run stopped by its time limit keeps every model measured so far


#: What a variant may change: GPU instances of the scorers / of the fused model, instances of the host steps
#: (lookup, top-k), the scorers' and fused model's queue delay (us) and the scorers' max batch.
VARIANT_KEYS = ("scorer", "fused", "host", "delay", "batch")


@dataclass(frozen=True)
class Variant:
    """Another batching/instance setting of the same published repository (``--variants``), measured after the
    rendered one: how the gpu flavour's counts get tuned by measurement."""

    name: str
    settings: dict[str, int]

    @classmethod
    def parse(cls, text: str) -> Variant:
        """``name=key:value,key:value`` with keys from :data:`VARIANT_KEYS`."""
        name, _, body = text.partition("=")
        settings = {}
        for pair in filter(None, body.split(",")):
            key, _, value = pair.partition(":")
            if key not in VARIANT_KEYS or not value.isdigit():
                raise argparse.ArgumentTypeError(f"variant {text!r}: {pair!r} is not one of {VARIANT_KEYS}:<int>")
            settings[key] = int(value)
        if not name or not settings:
            raise argparse.ArgumentTypeError(f"variant {text!r}: expected name=key:value[,key:value]")
        return cls(name, settings)

    def apply(self, repository: Path) -> dict[Path, str]:
        """Rewrites the configs (as messages); returns the original texts to restore."""
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2 as mc

        targets = {
            "scorer": (SCORER_TS, SCORER_ONNX),
            "fused": (FUSED,),
            "host": (LOOKUP, TOPK),
            "delay": (SCORER_TS, SCORER_ONNX, FUSED),
            "batch": (SCORER_TS, SCORER_ONNX),
        }
        original: dict[Path, str] = {}
        for key, value in self.settings.items():
            for model in targets[key]:
                path = repository / model / "config.pbtxt"
                text = path.read_text()
                original.setdefault(path, text)
                config = text_format.Parse(text, mc.ModelConfig())
                if key in ("scorer", "fused", "host"):
                    for group in config.instance_group:
                        group.count = value
                elif key == "delay":
                    config.dynamic_batching.max_queue_delay_microseconds = value
                else:
                    config.max_batch_size = value
                path.write_text(text_format.MessageToString(config))
        return original


def _tag(items: int) -> str:
    return f"{items // 1_000_000}m" if items >= 1_000_000 else f"{items}"


def prepare(args: argparse.Namespace, items: int) -> dict[str, Any]:
    """Synthetic run, ``recsys render-repo --flavour gpu``, ``recsys publish``: the repository to serve.

    Writes ``prepared.json`` into the size's work folder (how a background preparation hands over)."""
    tag = _tag(items)
    work = args.work / tag
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = args.out / f"gpu_serving-{tag}.log"
    result: dict[str, Any] = {"prepare_started_s": time.monotonic() - _T0}
    say(f"[{tag}] synthetic run: {items:,} items x {args.users:,} users x {args.factors} ...")
    result["run"] = make_run(work / "run", items, args.users, args.factors, args.plays, args.seed)
    repository = work / "repository"
    result["render_seconds"] = recsys("render-repo", "--out", str(repository), "--flavour", "gpu", log=log)
    if args.device == "cpu":
        cpu_instances(repository)
    say(f"[{tag}] recsys publish ...")
    result["publish_seconds"] = recsys("publish", str(work / "run"), "--repository", str(repository), log=log)
    version = max(int(p.name) for p in (repository / SCORER_TS).iterdir() if p.name.isdigit())
    manifest = json.loads((repository / SCORER_TS / str(version) / "publish.json").read_text())
    result["version"] = version
    result["publish_parity"] = manifest.get("parity")
    result["configs"] = instance_groups(repository)
    result["version_bytes"] = {
        model: sum(f.stat().st_size for f in (repository / model / str(version)).iterdir() if f.is_file())
        for model in (SCORER_TS, SCORER_ONNX, FUSED, LOOKUP)
    }
    say(f"[{tag}] published version {version} in {result['publish_seconds']:.0f} s")
    shutil.rmtree(work / "run", ignore_errors=True)  # the repository holds what is served
    (work / "prepared.json").write_text(json.dumps(result))
    return result


def prepare_in_background(args: argparse.Namespace, items: int) -> subprocess.Popen[bytes]:
    """The same :func:`prepare` in a child process, so a later size publishes while an earlier one is prepared."""
    command = [sys.executable, "-m", "benchmarks.gpu_serving", "--prepare-only", "--items", str(items)]
    command += ["--out", str(args.out), "--work", str(args.work), "--device", args.device]
    command += ["--users", str(args.users), "--plays", str(args.plays), "--factors", str(args.factors)]
    command += ["--seed", str(args.seed)]
    say(f"[{_tag(items)}] preparing in the background")
    return subprocess.Popen(command, cwd=ROOT)


def measure_size(
    args: argparse.Namespace,
    items: int,
    bits: TritonBits,
    analyzer: PerfAnalyzer,
    result: dict[str, Any],
    background: subprocess.Popen[bytes] | None = None,
) -> None:
    """Fills ``result`` step by step (a failure keeps what was measured before it)."""
    tag = _tag(items)
    work = args.work / tag
    log = args.out / f"gpu_serving-{tag}.log"
    if result.get("prepared_before"):
        pass
    elif background is None:
        result.update(prepare(args, items))
    else:
        began = time.monotonic()
        code = background.wait()
        result["waited_for_background_s"] = time.monotonic() - began
        if code != 0 or not (work / "prepared.json").is_file():
            raise SystemExit(f"background preparation of {items:,} items failed ({code}); see {log}")
        result.update(json.loads((work / "prepared.json").read_text()))
    repository = work / "repository"
    version = int(result["version"])
    requests = sample_requests(repository / LOOKUP / str(version), args.request_users, args.seed)
    files = input_files(requests, work / "inputs")
    say(f"[{tag}] in-process floor ...")
    result["floor"] = device_floor(repository / SCORER_TS / str(version), args.floor_device, requests)
    say(f"[{tag}] floor: {json.dumps(result['floor'])}")
    result["measurement"] = " ".join(_measurement(args).args())
    began = time.monotonic()
    with tritonserver(bits, repository, args.device, args.numpy_dir, log, args.ready_timeout) as server:
        result["states"] = server.states()
        result["load_seconds"] = time.monotonic() - began
        say(f"[{tag}] server ready in {result['load_seconds']:.0f} s: {result['states']}")
        result["served_parity"] = served_parity(
            server, repository / SCORER_TS / str(version), repository / LOOKUP / str(version), requests
        )
        say(f"[{tag}] served parity: {json.dumps(result['served_parity'])}")
        measure_models(args, analyzer, server, args.models, args.concurrency, work, files, result, tag)
        result["nvidia_smi"] = nvidia_smi()
    for variant in args.variants:
        if time.monotonic() > args.deadline:
            say(f"[{tag}] out of time budget: variant {variant.name} not measured")
            break
        entry: dict[str, Any] = {"name": variant.name, "settings": variant.settings}
        result.setdefault("variants", []).append(entry)
        original = variant.apply(repository)
        try:
            entry["configs"] = instance_groups(repository)
            with tritonserver(bits, repository, args.device, args.numpy_dir, log, args.ready_timeout) as server:
                entry["states"] = server.states()
                say(f"[{tag}] variant {variant.name} {variant.settings}: {entry['configs']}")
                measure_models(
                    args, analyzer, server, args.variant_models, args.variant_concurrency, work, files, entry, tag
                )
        finally:
            for path, text in original.items():
                path.write_text(text)
    if (work / "perf_analyzer").is_dir():
        with tarfile.open(args.out / f"gpu_serving-{tag}-perf.tar.gz", "w:gz") as tar:
            tar.add(work / "perf_analyzer", arcname=f"perf_analyzer-{tag}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def nvidia_smi() -> str:
    if shutil.which("nvidia-smi") is None:
        return "(no nvidia-smi)"
    query = "--query-gpu=name,memory.used,memory.total,utilization.gpu,clocks.sm,power.draw"
    done = subprocess.run(["nvidia-smi", query, "--format=csv"], capture_output=True, text=True, check=False)
    return done.stdout + done.stderr


# ------------------------------------------------------------------------------------------------ report


def _row(size: dict[str, Any], model: str, concurrency: int) -> dict[str, Any] | None:
    for run in size.get("runs", []):
        if run["model"] == model:
            return next((r for r in run["rows"] if r["concurrency"] == concurrency), None)
    return None


def _machine(info: dict[str, Any]) -> str:
    cores, memory = info.get("usable_cores"), info.get("memory_gib")
    return f"{info.get('cpu')}, {cores} cores, {memory} GiB, Python {info.get('python')}"


def render(payload: dict[str, Any]) -> str:
    title = "# The published repository on a GPU (gpu flavour)"
    if payload["device"] == "cpu":
        title = (
            "# The gpu flavour on CPU instances: the end-to-end test of benchmarks/gpu_serving.py\n\n"
            "The device scorer runs on CPU torch (fp32 candidates) and the GPU groups are CPU instances: these are no "
            "GPU figures, only the proof that the script, the flavour and the served answers work end to end."
        )
    lines = [
        title,
        "",
        f"{payload['finished_at']}; {_machine(payload['machine'])}; command: `{payload['command']}`.",
        "",
        "What `recsys render-repo --flavour gpu` and `recsys publish` write for a synthetic BPR run (random factors, "
        f"{payload['factors']} dims, item bias, power-law plays), served by tritonserver 2.51 (python backend) and "
        f"measured by perf_analyzer over gRPC, TOP_K {TOP_K}, {payload['measurement']}.",
        "",
    ]
    concurrency = payload["concurrency"]
    for size in payload["sizes"]:
        floor = size.get("floor", {})
        lines += [f"## {size['items']:,} items x {size['users']:,} listeners", ""]
        if "error" in size:
            lines += [f"Failed: {size['error']}", ""]
        publish = size.get("publish_seconds")
        if publish is not None:
            lines.append(
                f"* publish {publish:.0f} s (export + parity {json.dumps(size.get('publish_parity'))}); "
                f"server ready in {size.get('load_seconds', 0):.0f} s"
            )
        if floor:
            bound = floor["hbm_bound_us_per_pass"]
            lines += [
                f"* device scorer in-process ({floor.get('gpu', floor['device'])}, {floor['precision']} candidates): "
                f"1 query {floor['batch_1_ms']:.3f} ms; batch 64 {floor['batch_64_ms']:.3f} ms "
                f"({floor['batch_64_us_per_query']:.1f} us/query); batch 256 {floor['batch_256_ms']:.3f} ms "
                f"({floor['batch_256_us_per_query']:.1f} us/query)",
                f"* memory bound: one {floor['precision']} pass reads {floor['pass_bytes'] / 1e9:.2f} GB; at the "
                f"measured {floor['copy_gbs_read_plus_write']:,.0f} GB/s that is {bound:.0f} us per batch, i.e. at "
                f"most {1e6 / bound:,.0f} batches/s ({64e6 / bound:,.0f} queries/s at batch 64)",
            ]
        parity = size.get("served_parity")
        if parity:
            lines.append(
                f"* served parity on {parity['users']} listeners vs the TorchScript file on CPU: "
                + "; ".join(f"{m}: {v}" for m, v in parity.items() if m != "users")
            )
        if size.get("configs"):
            lines.append("* configs: " + "; ".join(f"{m} {c}" for m, c in size["configs"].items()))
        lines += [
            "",
            "| model | " + " | ".join(f"c={c} infer/s" for c in concurrency) + " | p50 ms c=1 | p50 ms c=64 |",
        ]
        lines.append("|---|" + "---|" * (len(concurrency) + 2))
        for model in MEASURED:
            cells = []
            for c in concurrency:
                row = _row(size, model, c)
                mark = "*" if c in size.get("unstable_levels", {}).get(model, []) else ""
                cells.append("-" if row is None else f"{row['throughput']:,.0f}{mark}")
            p50 = [(c, _row(size, model, c)) for c in (1, 64)]
            p50_cells = [
                "-"
                if row is None
                else f"{row['p50_ms']:.2f}" + ("*" if c in size.get("unstable_levels", {}).get(model, []) else "")
                for c, row in p50
            ]
            lines.append(f"| `{model}` | " + " | ".join([*cells, *p50_cells]) + " |")
        lines.append("")
        if size.get("variants"):
            lines += [
                "Variants of the same repository (rendered configs above are the baseline):",
                "",
                "| variant | settings | model | c | infer/s | p50 ms | p99 ms |",
                "|---|---|---|---|---|---|---|",
            ]
            for variant in size["variants"]:
                settings = ", ".join(f"{k} {v}" for k, v in variant["settings"].items())
                for run in variant.get("runs", []):
                    for row in run["rows"]:
                        mark = (
                            "*"
                            if row["concurrency"] in variant.get("unstable_levels", {}).get(run["model"], [])
                            else ""
                        )
                        lines.append(
                            f"| {variant['name']} | {settings} | `{run['model']}` | {row['concurrency']} | "
                            f"{row['throughput']:,.0f}{mark} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} |"
                        )
            lines.append("")
    unstable = [size.get("unstable_levels") for size in payload["sizes"]]
    unstable += [v.get("unstable_levels") for size in payload["sizes"] for v in size.get("variants", [])]
    if any(unstable):
        lines += ["\\* perf_analyzer found no stable window (within the stability rule) there; the figure is its "
                  "last windows accepted as measured.", ""]  # fmt: skip
    goals = payload.get("goals")
    if goals:
        lines += ["## Goals (1M items, through the ensembles)", ""]
        lines += [f"* {g['what']}: {g['measured']} -> {'met' if g['met'] else 'NOT met'}" for g in goals]
        lines.append("")
    return "\n".join(lines)


def goals(size: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for model in (ENSEMBLE_A, ENSEMBLE_B):
        row64, row1 = _row(size, model, 64), _row(size, model, 1)
        if row64 is not None:
            out.append(
                {
                    "what": f"{model} >= {GOAL_THROUGHPUT_C64:,.0f} infer/s at c=64",
                    "measured": f"{row64['throughput']:,.0f}",
                    "met": row64["throughput"] >= GOAL_THROUGHPUT_C64,
                }
            )
        if row1 is not None:
            out.append(
                {
                    "what": f"{model} p50 <= {GOAL_P50_C1_MS} ms at c=1",
                    "measured": f"{row1['p50_ms']:.2f} ms",
                    "met": row1["p50_ms"] <= GOAL_P50_C1_MS,
                }
            )
    return out


# ------------------------------------------------------------------------------------------------ main


def _ints(text: str) -> list[int]:
    return [int(v.replace("_", "")) for v in text.split(",") if v.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_serving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--triton-root", type=Path, help="holds pytriton/ and nvidia_pytriton.libs/ (default: the "
                        "installed nvidia-pytriton)")  # fmt: skip
    parser.add_argument("--perf-analyzer", type=Path, help="the binary (default: <triton-root>/perf_analyzer/bin/...)")
    parser.add_argument("--numpy-dir", type=Path, help="numpy 1.26 installed with pip --target (first on PYTHONPATH)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu_serving"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--items", type=_ints, default=[1_000_000, 10_000_000])
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--plays", type=int, default=24, help="mean plays per listener")
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--request-users", type=int, default=1000)
    parser.add_argument("--models", type=lambda s: s.split(","), default=list(MEASURED))
    parser.add_argument("--concurrency", type=_ints, default=[1, 16, 64, 256])
    parser.add_argument("--interval-ms", type=int, default=1000)
    parser.add_argument("--stability", type=float, default=50.0)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--pa-timeout", type=float, default=60.0)
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    parser.add_argument(
        "--variants",
        type=lambda text: [Variant.parse(v) for v in text.split(";") if v],
        default=[],
        help="after the rendered configs, measure these settings too, e.g. 's1=scorer:1;d200=delay:200,batch:128' "
        f"(keys {', '.join(VARIANT_KEYS)})",
    )
    parser.add_argument("--variant-models", type=lambda s: s.split(","), default=[ENSEMBLE_A, FUSED])
    parser.add_argument("--variant-concurrency", type=_ints, default=[1, 64])
    parser.add_argument("--budget-s", type=float, default=1e9, help="stop measuring new models after this")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)  # prepare_in_background
    args = parser.parse_args(argv)
    args.floor_device = "cuda:0" if args.device == "cuda" else "cpu"
    args.deadline = time.monotonic() + args.budget_s
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.absolute()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work = args.work.absolute()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.numpy_dir is not None:
        args.numpy_dir = args.numpy_dir.absolute()
    args.save = lambda: None
    if args.prepare_only:
        for items in args.items:
            prepare(args, items)
        return 0
    if args.triton_root is None:
        import importlib.util

        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("no --triton-root and no installed nvidia-pytriton")
        args.triton_root = Path(next(iter(spec.submodule_search_locations))).parent
    bits = triton_bits(args.triton_root.absolute(), args.work)
    pa_binary = args.perf_analyzer or args.triton_root / "perf_analyzer" / "bin" / "perf_analyzer"
    analyzer = perf_analyzer_at(pa_binary.absolute(), bits.libs, args.work)

    from benchmarks.harness.facts import machine

    payload: dict[str, Any] = {
        # gpu_triton.sh passes how it was called (the command to repeat); else this module's own command line
        "command": os.environ.get("GPU_SERVING_COMMAND")
        or " ".join(["python -m benchmarks.gpu_serving", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "device": args.device,
        "factors": args.factors,
        "concurrency": args.concurrency,
        "measurement": f"time windows of {args.interval_ms} ms, stability {args.stability:g}%, <= {args.trials} trials",
        "sizes": [],
    }
    status = 0
    # Later sizes publish in the background while the first one is published; measurements wait for them (see
    # measure_size), so no preparation runs while perf_analyzer measures.
    background = {items: prepare_in_background(args, items) for items in args.items[1:]}
    for position, items in enumerate(args.items):
        if time.monotonic() > args.deadline:
            say(f"out of time budget before {items:,} items")
            break
        size: dict[str, Any] = {"items": items, "users": args.users, "factors": args.factors}
        payload["sizes"].append(size)

        def save(size: dict[str, Any] = size) -> None:
            if size["items"] == 1_000_000:
                payload["goals"] = goals(size)
            payload["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            payload["seconds"] = time.monotonic() - _T0
            (args.out / "gpu_serving.json").write_text(json.dumps(payload, indent=2) + "\n")
            (args.out / "gpu_serving.md").write_text(render(payload))

        args.save = save
        try:
            if position == 0 and len(args.items) > 1:
                size.update(prepare(args, items))
                for later, process in background.items():
                    say(f"waiting for the background preparation of {later:,} items before measuring")
                    if process.wait() != 0:
                        say(f"background preparation of {later:,} items failed")
                size["prepared_before"] = True
            measure_size(args, items, bits, analyzer, size, background.get(items))
        except (Exception, SystemExit, KeyboardInterrupt) as exc:  # one size failing keeps the other's figures
            say(f"{items:,} items failed: {type(exc).__name__}: {exc}")
            size["error"], status = f"{type(exc).__name__}: {exc}", 1
            if isinstance(exc, KeyboardInterrupt):  # the time limit: keep what was measured, stop
                save()
                break
        save()
    print((args.out / "gpu_serving.md").read_text())
    return status


if __name__ == "__main__":
    sys.exit(main())
