"""GPU serving benchmark: a python-backend scorer running torch on the GPU behind the real tritonserver.

Meant for a borrowed GPU machine with no network and no Triton install (see ``benchmarks/gpu_triton.sh``, which
unpacks the bundle built by ``benchmarks/gpu_bundle.sh`` and calls this module). It needs only the standard
library, numpy and torch in the calling Python, plus the unpacked bundle:

    <triton-root>/pytriton/tritonserver/{bin,backends,caches,python_backend_stubs/3.X}
    <triton-root>/nvidia_pytriton.libs/
    <triton-root>/perf_analyzer/bin/perf_analyzer

Steps: random factors for a 1M-item catalog (64 dims; values are irrelevant to speed), the same scorer maths
in-process on the device (single query, batch of 256) and the device's copy bandwidth (the bound of one pass over
the items), then one tritonserver with three configurations of ``benchmarks/gpu_scorer_model.py``:

* ``gpu_scorer_lat``: 1 instance, no queue delay, max batch 256, DLPack outputs (tuned for concurrency 1);
* ``gpu_scorer_thr``: 4 instances, 500 us queue delay, max batch 1024, DLPack outputs (tuned for throughput);
* ``gpu_scorer_thr_host``: as ``thr`` but one host copy per batch instead of per-response device tensors;

each measured by perf_analyzer over gRPC at concurrency 1, 8, 64, 256. Results go to ``--out``
(``gpu_triton.{md,json}`` plus every perf_analyzer CSV and report, the server log and nvidia-smi output).

``--device cpu`` runs the same thing on CPU instances (fp32) for a local smoke test of the script itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.perf_tools import Measurement, PerfAnalyzer, PerfRun, run_perf_analyzer, settled_tree_memory

HERE = Path(__file__).resolve().parent
MODEL_SOURCE = HERE / "gpu_scorer_model.py"
STUB = "triton_python_backend_stub"
SHM_PREFIX = "triton_python_backend_shm_region_"


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass(frozen=True)
class ScorerConfig:
    name: str
    instances: int
    max_batch: int
    queue_delay_us: int
    output_mode: str  # dlpack | host

    def render(self, device: str, data_dir: Path, dtype: str) -> str:
        kind = "KIND_GPU" if device == "cuda" else "KIND_CPU"
        gpus = "\n    gpus: [ 0 ]" if device == "cuda" else ""
        params = {"data_dir": str(data_dir), "dtype": dtype, "output_mode": self.output_mode}
        rendered_params = "\n".join(
            f'parameters {{\n  key: "{k}"\n  value: {{ string_value: "{v}" }}\n}}' for k, v in params.items()
        )
        return f"""name: "{self.name}"
backend: "python"
max_batch_size: {self.max_batch}
input [
  {{ name: "USER_INDEX", data_type: TYPE_INT64, dims: [ 1 ] }},
  {{ name: "EXCLUDE", data_type: TYPE_INT64, dims: [ -1 ] }},
  {{ name: "TOP_K", data_type: TYPE_INT64, dims: [ 1 ] }}
]
output [
  {{ name: "SCORES", data_type: TYPE_FP32, dims: [ -1 ] }},
  {{ name: "ITEMS", data_type: TYPE_INT64, dims: [ -1 ] }}
]
dynamic_batching {{
  max_queue_delay_microseconds: {self.queue_delay_us}
}}
instance_group [
  {{
    count: {self.instances}
    kind: {kind}{gpus}
  }}
]
{rendered_params}
"""


CONFIGS = {
    "lat": ScorerConfig("gpu_scorer_lat", instances=1, max_batch=256, queue_delay_us=0, output_mode="dlpack"),
    "thr": ScorerConfig("gpu_scorer_thr", instances=4, max_batch=1024, queue_delay_us=500, output_mode="dlpack"),
    "thr_host": ScorerConfig(
        "gpu_scorer_thr_host", instances=4, max_batch=1024, queue_delay_us=500, output_mode="host"
    ),
}


# ------------------------------------------------------------------------------------------------ setup


def make_data(folder: Path, items: int, users: int, factors: int, seed: int) -> None:
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    np.save(folder / "items.npy", (rng.standard_normal((items, factors), dtype=np.float32) * 0.1))
    np.save(folder / "users.npy", (rng.standard_normal((users, factors), dtype=np.float32) * 0.1))
    np.save(folder / "fallback.npy", np.sort(rng.random(items, dtype=np.float32))[::-1].copy())


def make_requests(path: Path, users: int, items: int, n: int, width: int, seed: int) -> None:
    """perf_analyzer input data: ``n`` users, each with 0..width already-heard items (padded with -1)."""
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    rows = []
    for user in rng.choice(users, size=min(n, users), replace=False).tolist():
        heard = rng.choice(items, size=int(rng.integers(0, width + 1)), replace=False).tolist()
        rows.append(
            {
                "USER_INDEX": [int(user)],
                "EXCLUDE": {"content": heard + [-1] * (width - len(heard)), "shape": [width]},
                "TOP_K": [10],
            }
        )
    path.write_text(json.dumps({"data": rows}))


def layout_backend(root: Path, work: Path) -> tuple[Path, Path, Path, Path]:
    """backends/python with the stub of this Python; returns (binary, backend_dir, cache_dir, libs_dir)."""
    dist = root / "pytriton" / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / STUB
    if not stub.is_file():
        have = sorted(p.name for p in (dist / "python_backend_stubs").glob("*"))
        raise SystemExit(f"the bundle has no python backend stub for Python {version} (has {have})")
    target = work / "backends" / "python"
    target.mkdir(parents=True, exist_ok=True)
    backend = dist / "backends" / "python"
    for src in (backend / "libtriton_python.so", backend / "triton_python_backend_utils.py", stub):
        dst = target / src.name
        dst.unlink(missing_ok=True)
        dst.symlink_to(src)
    return dist / "bin" / "tritonserver", work / "backends", dist / "caches", root / "nvidia_pytriton.libs"


def perf_analyzer_from(root: Path, libs: Path, work: Path) -> PerfAnalyzer:
    lib_dir = work / "pa_lib"
    lib_dir.mkdir(parents=True, exist_ok=True)
    for want, pattern in (("libb64.so.0d", "libb64-*.so.0d"), ("libcudart.so.12", "libcudart-*.so.12*")):
        found = sorted(libs.glob(pattern))
        if not found:
            raise SystemExit(f"no {pattern} in {libs}")
        link = lib_dir / want
        link.unlink(missing_ok=True)
        link.symlink_to(found[0])
    analyzer = PerfAnalyzer(binary=root / "perf_analyzer" / "bin" / "perf_analyzer", lib_dir=lib_dir)
    analyzer.version()
    return analyzer


def free_ports(n: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


# ------------------------------------------------------------------------------------------------ floors


def device_floor(data: Path, device: str, dtype: str, width: int, repeats: int = 200) -> dict[str, Any]:
    """The scorer's maths in this process: one query, and a batch of 256; plus the device's copy bandwidth."""
    import numpy as np
    import torch

    torch_dtype = torch.float16 if dtype == "fp16" and device == "cuda" else torch.float32
    dev = torch.device(device)
    items = torch.from_numpy(np.load(data / "items.npy")).to(dev, torch_dtype)
    users = torch.from_numpy(np.load(data / "users.npy")).to(dev, torch_dtype)
    n_items = items.shape[0]

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def one(batch: int) -> float:
        index = torch.randint(0, users.shape[0], (batch,))
        exclude = torch.randint(0, n_items, (batch, width))
        sync()
        began = time.perf_counter()
        with torch.inference_mode():
            scores = users[index.to(dev)] @ items.T
            scores.scatter_(1, exclude.to(dev), -torch.inf)
            values, top = torch.topk(scores, 10, dim=1)
            values.float().cpu()
            top.cpu()
        sync()
        return time.perf_counter() - began

    out: dict[str, Any] = {"device": device, "dtype": str(torch_dtype), "exclude_width": width}
    for batch in (1, 256):
        for _ in range(5):
            one(batch)
        times = sorted(one(batch) for _ in range(repeats if batch == 1 else max(repeats // 10, 5)))
        out[f"batch_{batch}_ms"] = times[len(times) // 2] * 1e3
        out[f"batch_{batch}_us_per_query"] = times[len(times) // 2] * 1e6 / batch
    size = 1 << 30 if dev.type == "cuda" else 1 << 28
    src = torch.ones(size // 4, dtype=torch.float32, device=dev)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync()
    best = float("inf")
    for _ in range(10):
        began = time.perf_counter()
        dst.copy_(src)
        sync()
        best = min(best, time.perf_counter() - began)
    out["copy_gbs_read_plus_write"] = 2 * size / best / 1e9
    item_bytes = int(n_items) * int(items.shape[1]) * items.element_size()
    out["item_bytes"] = item_bytes
    out["one_pass_bound_us"] = item_bytes / (out["copy_gbs_read_plus_write"] * 1e9) * 1e6
    if dev.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(dev)
    return out


def release_device_memory() -> None:
    """Hands the floor's cached device memory back before the server's instances allocate theirs."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ server


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    http: int
    grpc: int
    metrics: int
    log: Path

    def get(self, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", data=body)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=10) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()
        except OSError:
            return 0, b""


@contextlib.contextmanager
def tritonserver(
    binary: Path,
    backend_dir: Path,
    cache_dir: Path,
    libs: Path,
    repository: Path,
    models: Sequence[str],
    device: str,
    numpy_dir: Path | None,
    log: Path,
    ready_timeout_s: float,
) -> Iterator[Server]:
    http, grpc, metrics = free_ports(3)
    shm_prefix = f"{SHM_PREFIX}gpubench_{os.getpid()}_"
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    libdirs = [str(libs), str(sysconfig.get_config_var("LIBDIR") or ""), "/usr/lib/x86_64-linux-gnu"]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in [*libdirs, env.get("LD_LIBRARY_PATH", "")] if p)
    if numpy_dir is not None:  # numpy < 2 for the stubs: with 2.x python-model outputs come back empty
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(numpy_dir), env.get("PYTHONPATH", "")) if p)
    command = [
        str(binary),
        f"--model-repository={repository}",
        f"--backend-directory={backend_dir}",
        f"--cache-directory={cache_dir}",
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
        f"--http-port={http}",
        f"--grpc-port={grpc}",
        f"--metrics-port={metrics}",
        "--model-control-mode=explicit",
        *[f"--load-model={m}" for m in models],
        "--exit-on-error=false",
        "--metrics-config=summary_latencies=true",
        "--backend-config=python,shm-default-byte-size=16777216",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
    ]
    if device == "cpu":
        command += ["--pinned-memory-pool-byte-size=0", "--allow-gpu-metrics=false"]
    say("starting " + " ".join(command))
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL, start_new_session=True
        )
    server = Server(process, http, grpc, metrics, log)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while server.get("/v2/health/live")[0] != 200:
            if process.poll() is not None:
                raise SystemExit(f"tritonserver exited ({process.returncode}); see {log}")
            if time.monotonic() > deadline:
                raise SystemExit(f"tritonserver not live after {ready_timeout_s:g} s; see {log}")
            time.sleep(0.5)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        for region in Path("/dev/shm").glob(f"{shm_prefix}*"):  # left behind only by a crashed stub
            region.unlink(missing_ok=True)


def model_states(server: Server) -> dict[str, str]:
    status, body = server.get("/v2/repository/index", b"{}")
    if status != 200:
        return {}
    return {str(e["name"]): f"{e.get('state')} {e.get('reason', '')}".strip() for e in json.loads(body)}


def nvidia_smi() -> str:
    if shutil.which("nvidia-smi") is None:
        return "(no nvidia-smi)"
    done = subprocess.run(
        [
            "nvidia-smi",
            "--query-gpu=name,memory.used,memory.total,utilization.gpu,clocks.sm,power.draw",
            "--format=csv",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout + done.stderr


# ------------------------------------------------------------------------------------------------ report


def render(payload: dict[str, Any], runs: list[PerfRun]) -> str:
    floor = payload["floor"]
    lines = [
        "# GPU serving benchmark",
        "",
        f"{payload['finished_at']}: {floor.get('gpu', payload['device'])}, {payload['items']:,} items x "
        f"{payload['factors']} ({floor['dtype']}), exclusion width {payload['width']}, TOP_K 10, gRPC, "
        f"perf_analyzer {payload['measurement']}.",
        "",
        "## Without Triton (same maths, this process)",
        "",
        f"* one query: {floor['batch_1_ms']:.3f} ms; batch of 256: {floor['batch_256_ms']:.3f} ms "
        f"({floor['batch_256_us_per_query']:.1f} us per query)",
        f"* device copy {floor['copy_gbs_read_plus_write']:,.0f} GB/s (read + write): one pass over the "
        f"{floor['item_bytes'] / 1e6:,.0f} MB of items costs at least {floor['one_pass_bound_us']:.0f} us",
        "",
        "## Triton",
        "",
        "| model | c | infer/s | p50 ms | p90 ms | p99 ms | queue ms | compute infer ms | output ms | batch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for row in run.rows:
            own = row.server[0] if row.server else None
            batch = own.mean_batch if own else None
            lines.append(
                f"| `{run.model}` | {row.concurrency} | {row.throughput:,.0f} | {row.p50_ms:.2f} | {row.p90_ms:.2f} "
                f"| {row.p99_ms:.2f} | {row.server_queue_ms or 0:.2f} | {row.server_compute_infer_ms or 0:.2f} "
                f"| {row.server_compute_output_ms or 0:.2f} | {'-' if batch is None else f'{batch:.1f}'} |"
            )
        for level, why in run.failures.items():
            lines.append(f"| `{run.model}` | {level} | failed: {why[:100]} | | | | | | | |")
    lines += ["", f"Model states: {payload['model_states']}", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_triton", description=__doc__.split("\n\n")[0])
    parser.add_argument("--triton-root", type=Path, required=True, help="the unpacked bundle")
    parser.add_argument("--numpy-dir", type=Path, help="numpy 1.26 installed with pip --target (first on PYTHONPATH)")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (repository, factors, backends)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--width", type=int, default=64, help="EXCLUDE width (already-heard items, -1 padded)")
    parser.add_argument("--request-users", type=int, default=2000)
    parser.add_argument("--configs", default="lat,thr,thr_host", help=f"among {','.join(CONFIGS)}")
    parser.add_argument("--concurrency", type=_ints, default=[1, 8, 64, 256])
    parser.add_argument("--request-count", type=int, default=1000)
    parser.add_argument("--stability", type=float, default=25.0)
    parser.add_argument("--max-trials", type=int, default=6)
    parser.add_argument("--pa-timeout", type=float, default=90.0, help="seconds per perf_analyzer process")
    parser.add_argument("--ready-timeout", type=float, default=240.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    configs = [CONFIGS[name] for name in args.configs.split(",") if name]
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()

    binary, backend_dir, cache_dir, libs = layout_backend(args.triton_root.absolute(), work)
    analyzer = perf_analyzer_from(args.triton_root.absolute(), libs, work)
    data = work / "data"
    say(f"factors: {args.items:,} items, {args.users:,} users, {args.factors} dims")
    make_data(data, args.items, args.users, args.factors, args.seed)
    requests = work / "requests.json"
    make_requests(requests, args.users, args.items, args.request_users, args.width, args.seed)
    say("in-process floor and bandwidth ...")
    floor = device_floor(data, args.device, args.dtype, args.width)
    release_device_memory()
    say(f"floor: {json.dumps(floor)}")

    repository = work / "repository"
    shutil.rmtree(repository, ignore_errors=True)
    for config in configs:
        folder = repository / config.name
        (folder / "1").mkdir(parents=True)
        (folder / "config.pbtxt").write_text(config.render(args.device, data, args.dtype))
        shutil.copy(MODEL_SOURCE, folder / "1" / "model.py")

    measurement = Measurement(
        request_count=args.request_count, stability_percentage=args.stability, max_trials=args.max_trials
    )
    runs: list[PerfRun] = []
    server_log = args.out / "tritonserver.log"
    with tritonserver(
        binary,
        backend_dir,
        cache_dir,
        libs,
        repository,
        [c.name for c in configs],
        args.device,
        args.numpy_dir.absolute() if args.numpy_dir else None,
        server_log,
        args.ready_timeout,
    ) as server:
        states = model_states(server)
        say(f"server up after {time.monotonic() - began:.0f} s; models: {states}")
        memory = settled_tree_memory(server.process.pid)
        smi_loaded = nvidia_smi()
        for config in configs:
            if not states.get(config.name, "").startswith("READY"):
                say(f"skipping {config.name}: {states.get(config.name)}")
                continue
            say(f"perf_analyzer {config.name} at {args.concurrency}")
            runs.append(
                run_perf_analyzer(
                    analyzer,
                    config.name,
                    f"127.0.0.1:{server.grpc}",
                    concurrency=args.concurrency,
                    work_dir=args.out / "perf_analyzer",
                    input_data=requests,
                    measurement=measurement,
                    timeout_s=args.pa_timeout,
                    metrics_url=f"127.0.0.1:{server.metrics}/metrics" if args.device == "cuda" else None,
                    log=say,
                )
            )
        smi_after = nvidia_smi()
        memory_after = settled_tree_memory(server.process.pid, quiet_s=0.5, timeout_s=3)

    payload: dict[str, Any] = {
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": args.device,
        "dtype": args.dtype,
        "items": args.items,
        "users": args.users,
        "factors": args.factors,
        "width": args.width,
        "configs": [asdict(c) for c in configs],
        "measurement": " ".join(measurement.args()),
        "floor": floor,
        "model_states": states,
        "host_memory": {"loaded": asdict(memory), "after": asdict(memory_after)},
        "nvidia_smi": {"loaded": smi_loaded, "after": smi_after},
        "runs": [run.to_json() for run in runs],
        "seconds": time.monotonic() - began,
        "python": sys.version.split()[0],
    }
    (args.out / "gpu_triton.json").write_text(json.dumps(payload, indent=2) + "\n")
    markdown = render(payload, runs)
    (args.out / "gpu_triton.md").write_text(markdown)
    print(markdown)
    say(f"done in {payload['seconds']:.0f} s")
    return 0 if runs and not any(run.failures for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
