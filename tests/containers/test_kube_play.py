"""The local overlay's workloads under ``podman kube play`` (issue 16): the containers start with the manifests'
env, args and security context, their probes pass when run as the kubelet runs them, and a recommendation goes
through the played NGINX. What podman 4.3 does not play is listed in scripts/kube_play.py and checked here too."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from containers_support import ROOT, build_images, check_database_roles, gate, inspect, podman, script
from tests_support import query

from scripts import kube_play

pytestmark = gate

PLAYED = {"postgres", "triton", "feedback", "gateway", "nginx"}


@pytest.fixture(scope="module")
def played() -> Iterator[kube_play.Plan]:
    build_images()
    try:
        # Returns once every played container's readiness, liveness and startup probes pass (it fails otherwise).
        script("kube-play", timeout=900)
        yield kube_play.load(ROOT / ".cache" / "containers" / "kube-play")
    finally:
        script("kube-down")


def _security(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    return dict(pod.get("securityContext", {})) | dict(container.get("securityContext", {}))


def test_every_workload_but_prometheus_is_played(played: kube_play.Plan) -> None:
    assert set(played.addresses) == PLAYED
    deployments = [line for line in played.left_out if line.startswith(("Deployment/", "StatefulSet/"))]
    assert len(deployments) == 1, deployments
    assert deployments[0].startswith("Deployment/prometheus"), deployments
    for name in PLAYED:
        pod = inspect("pod", "-".join((name, "pod", "0")))
        assert pod["State"] == "Running", f"{name}: {pod['State']}"


def test_containers_start_with_the_manifests_env_args_and_security_context(played: kube_play.Plan) -> None:
    config_maps = {
        d["metadata"]["name"]: d["data"] for docs in played.workloads.values() for d in docs if d["kind"] == "ConfigMap"
    }
    for workload in played.addresses:
        spec = played.pod_spec(workload)
        for container in spec["containers"]:
            name = kube_play.container_name(workload, container["name"])
            info = inspect("container", name)
            env = dict(e.split("=", 1) for e in info["Config"]["Env"])
            for item in container.get("env", []):
                ref = item.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    wanted = played.secrets[ref["secretKeyRef"]["name"]][ref["secretKeyRef"]["key"]]
                elif "configMapKeyRef" in ref:
                    wanted = config_maps[ref["configMapKeyRef"]["name"]][ref["configMapKeyRef"]["key"]]
                else:
                    wanted = item["value"]
                assert env.get(item["name"]) == wanted, f"{name}: {item['name']}"
            for source in container.get("envFrom", []):
                for key, value in config_maps[source["configMapRef"]["name"]].items():
                    assert env.get(key) == value, f"{name}: {key} (envFrom)"
            if "args" in container:
                assert info["Config"]["Cmd"] == container["args"], name
            security = _security(spec, container)
            uid = podman("exec", name, "id", "-u").stdout.strip()
            assert uid != "0", f"{name} runs as root"
            if "runAsUser" in security:
                assert uid == str(security["runAsUser"]), name
            assert info["HostConfig"]["ReadonlyRootfs"] is bool(security.get("readOnlyRootFilesystem")), name
            status = podman("exec", name, "cat", "/proc/self/status").stdout
            if security.get("capabilities", {}).get("drop") == ["ALL"]:
                assert "CapEff:\t0000000000000000" in status, f"{name} keeps capabilities"
            if security.get("allowPrivilegeEscalation") is False:
                assert "NoNewPrivs:\t1" in status, name


def test_the_manifests_probes_pass(played: kube_play.Plan) -> None:
    kinds = ("readinessProbe", "livenessProbe", "startupProbe")
    verdicts = kube_play.wait_ready(played, kinds=kinds, timeout=60, podman=["podman"])
    assert {key.split(" ")[0].split("/")[0] for key in verdicts} == PLAYED
    assert all(verdict is None for verdict in verdicts.values()), verdicts


def test_a_recommendation_through_the_played_nginx_reaches_postgresql(played: kube_play.Plan) -> None:
    """Services are names in every pod's hosts file (kube play has none): NGINX -> gateway -> Triton and the
    writer -> PostgreSQL find each other by them, as in the cluster."""
    request = urllib.request.Request(
        f"http://{played.addresses['nginx']}:8088/recommend",
        data=json.dumps({"user_id": "7", "top_k": 3}).encode(),
        headers={"Content-Type": "application/json", "X-User-Id": "7"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.load(response)
    assert len(answer["recommended_items"]) == 3
    password = played.secrets["recsys-db"]["password"]
    credentials = f"recsys:{password}"
    url = f"postgresql://{credentials}@{played.addresses['postgres']}:5432/recsys"
    deadline = time.monotonic() + 30
    stored: list[Any] = []
    while not stored:  # gateway -> writer (with the Secret's token) -> PostgreSQL; the writer batches
        assert time.monotonic() < deadline, "the impression did not reach PostgreSQL within 30 s"
        with contextlib.suppress(asyncpg.UndefinedTableError):  # the writer migrates at its first write
            stored = query(url, "SELECT model FROM impressions WHERE request_id = $1", answer["request_id"])
    assert stored[0]["model"] == answer["model"]


def test_the_writers_role_is_not_a_superuser(played: kube_play.Plan) -> None:
    """The local overlay's PostgreSQL: the `recsys` role made by the ConfigMap postgres-initdb, the superuser's
    password (the Secret's `admin-password`) read by PostgreSQL's pod alone."""
    secret = played.secrets["recsys-db"]
    check_database_roles(f"{played.addresses['postgres']}:5432", secret["password"], secret["admin-password"])
    readers = {
        workload
        for workload in played.addresses
        for container in played.pod_spec(workload)["containers"]
        for env in container.get("env", [])
        if env.get("valueFrom", {}).get("secretKeyRef", {}).get("key") == "admin-password"
    }
    assert readers == {"postgres"}
