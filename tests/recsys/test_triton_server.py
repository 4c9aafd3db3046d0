"""The REAL Triton Inference Server (bundled in nvidia-pytriton) started, used and stopped by ``recsys.stack.triton``.

Skipped, with the reason, where the server cannot run at all (no nvidia-pytriton, or the binary does not load).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from numpy.typing import NDArray
from tritonclient.utils import InferenceServerException

import recsys.stack
from recsys.core.errors import ConfigError
from recsys.stack import triton
from recsys.stack.triton import (
    TritonConfig,
    TritonInstall,
    TritonPorts,
    TritonServer,
    TritonServerError,
    check_runnable,
    find_tritonserver,
)
from recsys.stack.triton import server as triton_server
from recsys.stack.triton.config import resolve_ports

FIXTURE_REPO = Path(__file__).parent / "triton_fixture_models"
BROKEN = "broken_config"
Floats = NDArray[np.float32]


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> TritonInstall:
    try:
        found = find_tritonserver(tmp_path_factory.mktemp("triton-work"))
        check_runnable(found)
    except TritonServerError as exc:
        pytest.skip(f"the real Triton server cannot run on this machine: {exc}")
    return found


@pytest.fixture(scope="module")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture repository plus a model whose config.pbtxt does not parse (copied: the stub writes __pycache__)."""
    repo = tmp_path_factory.mktemp("models")
    shutil.copytree(FIXTURE_REPO, repo, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / BROKEN / "1").mkdir(parents=True)
    (repo / BROKEN / "config.pbtxt").write_text(f'name: "{BROKEN}"\nbackend: "python"\nmax_batch_size: "eight"\n')
    shutil.copy(FIXTURE_REPO / "add_one" / "1" / "model.py", repo / BROKEN / "1" / "model.py")
    return repo


def config(install: TritonInstall, repo: Path, **overrides: object) -> TritonConfig:
    base: dict[str, object] = {"ports": TritonPorts.auto(), "workdir": install.backend_dir.parent}
    return TritonConfig(model_repository=repo, **{**base, **overrides})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def server(install: TritonInstall, model_repo: Path) -> Iterator[TritonServer]:
    with TritonServer(config(install, model_repo, model_control="explicit"), install) as running:
        yield running


@pytest.fixture(scope="module")
def add_one(server: TritonServer) -> str:
    server.load_model("add_one")
    return "add_one"


@pytest.fixture
def client(server: TritonServer) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.urls.grpc) as grpc_client:
        yield grpc_client


def infer(client: grpcclient.InferenceServerClient, x: Floats) -> Floats:
    tensor = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    out: Floats = client.infer("add_one", [tensor]).as_numpy("OUTPUT0")
    return out


def alive(pid: int) -> bool:
    """Running, not a zombie (/proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def shm_regions(server: TritonServer) -> list[Path]:
    return sorted(triton.SHM_DIR.glob(f"{server.shm_prefix}*"))


# --- no server needed ------------------------------------------------------------------------------------------


def test_package_exports_the_triton_api() -> None:
    assert set(recsys.stack.__all__) <= set(triton.__all__)
    assert all(getattr(recsys.stack, name) is getattr(triton, name) for name in recsys.stack.__all__)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model_control": "none", "load_models": ("add_one",)}, "load_models needs model_control='explicit'"),
        ({"load_models": ("*", "add_one")}, "must be the only entry"),
        ({"ports": TritonPorts(http=70000)}, "outside 0..65535"),
        ({"ready_timeout_s": 0}, "positive"),
    ],
)
def test_config_refuses_what_cannot_work(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        TritonConfig(model_repository=FIXTURE_REPO, **overrides)  # type: ignore[arg-type]


def test_command_has_the_documented_flags(install: TritonInstall) -> None:
    server = TritonServer(config(install, FIXTURE_REPO, ports=TritonPorts(9000, 9001, 9002), load_models=("*",)))
    command = server.command()
    for flag in (
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
        "--http-port=9000",
        "--grpc-port=9001",
        "--metrics-port=9002",
        "--pinned-memory-pool-byte-size=0",
        "--allow-gpu-metrics=false",
        "--metrics-config=summary_latencies=true",
        "--model-control-mode=explicit",
        "--load-model=*",
        f"--backend-directory={install.backend_dir}",
    ):
        assert flag in command
    assert server.urls.grpc == "127.0.0.1:9001"
    assert server.urls.http == "127.0.0.1:9000"
    assert server.urls.metrics == "http://127.0.0.1:9002/metrics"


def test_backend_dir_is_laid_out_idempotently(install: TritonInstall) -> None:
    python_dir = install.backend_dir / "python"
    names = {"libtriton_python.so", "triton_python_backend_utils.py", "triton_python_backend_stub"}
    assert names <= {p.name for p in python_dir.iterdir()}
    again = find_tritonserver(install.backend_dir.parent)
    assert again == install
    assert all((python_dir / name).resolve().is_file() for name in names)


def test_missing_pytriton_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TritonServerError, match="'nvidia-pytriton' package, which is not installed"):
        find_tritonserver(tmp_path)


# --- one real server for the module ------------------------------------------------------------------------------


def test_auto_ports_are_distinct_and_bound(server: TritonServer) -> None:
    ports = server.ports
    assert ports.is_resolved
    assert len({ports.http, ports.grpc, ports.metrics}) == 3
    assert server.urls.grpc == f"127.0.0.1:{ports.grpc}"


def test_add_one_over_grpc(server: TritonServer, add_one: str, client: grpcclient.InferenceServerClient) -> None:
    assert server.is_model_ready(add_one)
    assert server.is_model_ready(add_one, version="1")
    assert not server.is_model_ready(add_one, version="2")
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = infer(client, x)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, x + 1)


def test_batched_requests_each_get_their_own_answer(
    server: TritonServer, add_one: str, client: grpcclient.InferenceServerClient
) -> None:
    """8 concurrent requests: the dynamic batcher hands several to one execute(); one response each, in order."""
    before = client.get_inference_statistics(add_one, as_json=True)["model_stats"][0]
    results: dict[int, Floats] = {}
    errors: list[InferenceServerException] = []
    all_done = threading.Event()
    inputs = [np.full((1, 5), 10.0 * i, dtype=np.float32) for i in range(8)]

    def callback(index: int, result: grpcclient.InferResult, error: InferenceServerException | None) -> None:
        if error is None:
            results[index] = result.as_numpy("OUTPUT0")
        else:
            errors.append(error)
        if len(results) + len(errors) == len(inputs):
            all_done.set()

    for i, x in enumerate(inputs):
        tensor = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        client.async_infer(add_one, [tensor], callback=lambda result, error, i=i: callback(i, result, error))
    assert all_done.wait(timeout=30)
    assert errors == []
    for i, x in enumerate(inputs):
        np.testing.assert_array_equal(results[i], x + 1)
    after = client.get_inference_statistics(add_one, as_json=True)["model_stats"][0]
    # protobuf's JSON leaves out zero counters and writes int64 as strings
    requests = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
    executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    assert requests == 8
    assert executions < requests, "the dynamic batcher never grouped requests"


def test_metrics_count_successful_requests(
    server: TritonServer, add_one: str, client: grpcclient.InferenceServerClient
) -> None:
    infer(client, np.zeros((1, 2), dtype=np.float32))
    text = server.metrics()
    match = re.search(r'^nv_inference_request_success\{model="add_one",version="1"\} (\d+)', text, re.MULTILINE)
    assert match is not None
    assert int(match.group(1)) >= 1
    assert "nv_inference_request_summary_us" in text  # --metrics-config summary_latencies=true took effect


def test_unload_then_load_again(server: TritonServer, add_one: str, client: grpcclient.InferenceServerClient) -> None:
    server.unload_model(add_one)
    assert not server.is_model_ready(add_one)
    with pytest.raises(InferenceServerException):
        infer(client, np.zeros((1, 1), dtype=np.float32))
    server.load_model(add_one)
    assert server.is_model_ready(add_one)
    np.testing.assert_array_equal(infer(client, np.ones((1, 1), dtype=np.float32)), [[2.0]])


def test_broken_model_config_fails_to_load_with_the_cause_and_the_server_stays_up(
    server: TritonServer, add_one: str
) -> None:
    with pytest.raises(TritonServerError, match=f"could not load model '{BROKEN}'") as info:
        server.load_model(BROKEN)
    assert 'Expected integer, got: "eight"' in str(info.value)  # the cause, from the server's log
    assert server.is_running()
    assert not server.is_model_ready(BROKEN)
    assert server.is_model_ready(add_one)
    with pytest.raises(TritonServerError, match="model not found"):
        server.load_model("no_such_model")


def test_repository_index_lists_the_models(server: TritonServer, add_one: str) -> None:
    index = {entry["name"]: entry for entry in server.repository_index()}
    assert set(index) == {"add_one", BROKEN}
    assert index["add_one"]["state"] == "READY"


# --- servers of their own -----------------------------------------------------------------------------------------


def test_stop_leaves_no_process_and_no_shared_memory(install: TritonInstall, model_repo: Path) -> None:
    server = TritonServer(config(install, model_repo, load_models=("add_one",)), install)
    with server:
        assert server.is_model_ready("add_one")
        pids = server.running_pids()
        assert server.pid in pids
        assert len(pids) >= 2
        assert shm_regions(server)
    assert server.returncode == 0
    assert not [pid for pid in pids if alive(pid)]
    assert not shm_regions(server)
    assert server.ready_after_s is not None
    assert server.stopped_after_s is not None


def test_a_crashed_server_is_cleaned_up(install: TritonInstall, model_repo: Path) -> None:
    server = TritonServer(config(install, model_repo, load_models=("add_one",)), install).start()
    pids = server.running_pids()
    assert server.pid is not None
    assert shm_regions(server)
    os.kill(server.pid, signal.SIGKILL)
    assert server.stop() == -signal.SIGKILL
    assert not [pid for pid in pids if alive(pid)]  # the orphaned stub too
    assert not shm_regions(server)


def test_models_that_fail_at_start_fail_start(install: TritonInstall, model_repo: Path) -> None:
    server = TritonServer(config(install, model_repo, model_control="none"), install)
    with pytest.raises(TritonServerError, match=f"models failed to load at start: {BROKEN}") as info:
        server.start()
    assert 'Expected integer, got: "eight"' in str(info.value)
    assert not server.is_running()
    assert server.returncode is not None


def test_early_exit_raises_with_the_log(install: TritonInstall, model_repo: Path) -> None:
    server = TritonServer(config(install, model_repo, extra_args=("--no-such-flag=1",)), install)
    with pytest.raises(TritonServerError, match="exited with status") as info:
        server.start()
    message = str(info.value)
    assert "unrecognized option '--no-such-flag=1'" in message
    assert f"last {triton.LOG_TAIL_LINES} lines of {server.log_path}" in message


def test_auto_port_taken_meanwhile_is_picked_again(
    install: TritonInstall, model_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gap between picking a free port and tritonserver binding it: a collision there retries with new ports."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        real = resolve_ports
        picks: list[TritonPorts] = []

        def pick(ports: TritonPorts, host: str) -> TritonPorts:
            picked = real(ports, host)
            picks.append(picked if picks else TritonPorts(picked.http, taken, picked.metrics))
            return picks[-1]

        monkeypatch.setattr(triton_server, "resolve_ports", pick)
        with TritonServer(config(install, model_repo), install) as server:
            assert len(picks) == 2
            assert server.ports == picks[1]
            assert server.ports.grpc != taken


# --- the restricted APIs (issue 14: any local user could load code into Triton) ---------------------------------

KEY = "test-key-0123456789abcdef"
#: run by another local user (``nobody``) with the system Python: no key, every API but health
_WITHOUT_KEY = """
import json, sys, urllib.error, urllib.request
base = sys.argv[1]
out = {}
for name, method, path, body in (
    ("load with a file override", "POST", "/v2/repository/models/add_one/load",
     {"parameters": {"config": "{}", "file:1/model.py": "aW1wb3J0IG9z"}}),
    ("unload", "POST", "/v2/repository/models/add_one/unload", {}),
    ("repository index", "POST", "/v2/repository/index", {}),
    ("model config", "GET", "/v2/models/add_one/config", None),
    ("inference", "POST", "/v2/models/add_one/infer",
     {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}),
    ("health", "GET", "/v2/health/ready", None),
):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            out[name] = response.status
    except urllib.error.HTTPError as exc:
        out[name] = exc.code
print(json.dumps(out))
"""


def test_a_keyed_server_answers_only_health_without_its_key(install: TritonInstall, model_repo: Path) -> None:
    """Regression (the adversarial run): any local user could call model control, e.g. load a model with a file
    override, and so run code as Triton's user. With a key, every API but health wants it, over HTTP and gRPC;
    checked as the ``nobody`` user where this test runs as root."""
    import json
    import subprocess

    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    from recsys.core.triton_key import key_headers, key_metadata
    from recsys.stack.triton import TritonControl

    keyed = config(install, model_repo, load_models=("add_one",), api_key=KEY)
    restricted = "metadata,inference,shared-memory,model-config,model-repository,statistics,trace,logging"
    command = TritonServer(keyed, install).command()
    assert f"--grpc-restricted-protocol={restricted}:recsys-triton-key={KEY}" in command
    assert f"--http-restricted-api={restricted}:recsys-triton-key={KEY}" in command
    with TritonServer(keyed, install) as server:
        command = [sys.executable, "-c", _WITHOUT_KEY, f"http://{server.urls.http}"]
        if os.geteuid() == 0 and shutil.which("runuser"):
            command = ["runuser", "-u", "nobody", "--", "/usr/bin/python3", *command[1:]]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd="/", check=True)
        statuses = json.loads(done.stdout)
        assert statuses.pop("health") == 200
        assert set(statuses.values()) == {403}, statuses

        channel = grpc.insecure_channel(server.urls.grpc)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        calls = {
            "load": lambda md: stub.RepositoryModelLoad(
                service_pb2.RepositoryModelLoadRequest(model_name="add_one"), metadata=md
            ),
            "index": lambda md: stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(), metadata=md),
            "metadata": lambda md: stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="add_one"), metadata=md),
        }  # fmt: skip
        for name, call in calls.items():
            with pytest.raises(grpc.RpcError) as refused:
                call(())  # type: ignore[no-untyped-call]
            assert "restricted" in str(refused.value.details()), name
            call(key_metadata(KEY))  # type: ignore[no-untyped-call]  # the key holder is answered
        assert stub.ServerReady(service_pb2.ServerReadyRequest()).ready  # health needs no key
        channel.close()

        with (
            grpcclient.InferenceServerClient(server.urls.grpc) as stranger,
            pytest.raises(InferenceServerException, match="restricted"),
        ):
            infer(stranger, np.ones((1, 4), dtype=np.float32))
        with grpcclient.InferenceServerClient(server.urls.grpc) as holder:
            tensor = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
            tensor.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
            answer = holder.infer("add_one", [tensor], headers=dict(key_metadata(KEY)))
            np.testing.assert_array_equal(answer.as_numpy("OUTPUT0"), np.full((1, 4), 2, dtype=np.float32))
        assert [m["name"] for m in TritonControl(server.urls, api_key=KEY).repository_index()]
        assert key_headers(KEY) == {"recsys-triton-key": KEY}
        with pytest.raises(TritonServerError, match="restricted"):
            TritonControl(server.urls).load_model("add_one")
