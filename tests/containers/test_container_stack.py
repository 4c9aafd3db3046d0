"""The compose stack (docker/compose.yaml) run from the built images with podman (issue 16): a recommendation
through NGINX, its feedback stored in PostgreSQL, a model published by the trainer image into Triton's mounted
repository and hot-swapped, and every container healthy by its own check, as its non-root user, on a read-only root
file system."""

from __future__ import annotations

import json
import secrets
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from containers_support import ROOT, build_images, check_database_roles, gate, inspect, podman, script
from tests_support import query

pytestmark = gate

SERVICES = ("postgres", "triton", "feedback", "gateway", "nginx")
PORTS = ("POSTGRES", "TRITON_HTTP", "TRITON_GRPC", "TRITON_METRICS", "FEEDBACK", "GATEWAY", "GATEWAY_GRPC", "NGINX")


@dataclass(frozen=True)
class Stack:
    env: dict[str, str]

    def port(self, name: str) -> int:
        return int(self.env[f"RECSYS_HOST_PORT_{name}"])

    @property
    def database_url(self) -> str:
        return f"postgresql://recsys:{self.env['RECSYS_DB_PASSWORD']}@127.0.0.1:{self.port('POSTGRES')}/recsys"

    def container(self, service: str) -> str:
        return f"recsys_{service}_1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    build_images()
    env = {f"RECSYS_HOST_PORT_{name}": str(_free_port()) for name in PORTS}
    secret_names = ("RECSYS_DB_PASSWORD", "RECSYS_DB_ADMIN_PASSWORD", "RECSYS_FEEDBACK_TOKEN", "RECSYS_TRITON_API_KEY")
    env |= {name: secrets.token_hex(16) for name in secret_names}
    script("down", env=env)  # a previous run's containers and volumes
    try:
        script("up", env=env, timeout=900)  # returns once every container passes its own health check
        stack = Stack(env)
        _warm(stack)
        yield stack
    finally:
        script("down", env=env)


def _post(stack: Stack, path: str, body: dict[str, Any], user: str, status: int = 200) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.port('NGINX')}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-User-Id": user},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == status
        answer: dict[str, Any] = json.load(response)
        return answer


def _warm(stack: Stack) -> None:
    """Until the first recommendation answers: on the shared 2-core machine the python models' first requests can
    exceed the gateway's 500 ms Triton deadline (503) while they warm up."""
    deadline = time.monotonic() + 120
    while True:
        try:
            _post(stack, "/recommend", {"user_id": "42"}, "42")
            return
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or time.monotonic() > deadline:
                raise


def test_every_container_is_healthy_by_its_own_check(stack: Stack) -> None:
    for service in SERVICES:
        name = stack.container(service)
        assert podman("healthcheck", "run", name, check=False).returncode == 0, f"{name}: its health check fails"
        assert inspect("container", name)["State"]["Health"]["Status"] == "healthy"


def test_containers_run_as_their_non_root_users_on_read_only_roots(stack: Stack) -> None:
    services = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]
    for service in SERVICES:
        name = stack.container(service)
        uid = podman("exec", name, "id", "-u").stdout.strip()
        assert uid != "0", f"{name} runs as root"
        if services[service].get("read_only"):
            assert inspect("container", name)["HostConfig"]["ReadonlyRootfs"] is True
            probe = podman("exec", name, "sh", "-c", "touch /usr/recsys-probe", check=False)
            assert probe.returncode != 0, f"{name}: / is writable"
            assert "Read-only file system" in probe.stderr, probe.stderr


def test_recommendation_through_nginx_and_its_feedback_stored_in_postgresql(stack: Stack) -> None:
    answer = _post(stack, "/recommend", {"user_id": "42", "top_k": 5}, "42")
    assert len(answer["recommended_items"]) == 5
    assert answer["group"] in ("A", "B"), answer
    feedback = {
        "user_id": "42",
        "group": answer["group"],
        "request_id": answer["request_id"],
        "clicked_item": answer["recommended_items"][0]["item_id"],
    }
    _post(stack, "/feedback", feedback, "42", status=202)  # accepted: the writer stores it in its next batch
    deadline = time.monotonic() + 30
    rows: list[Any] = []
    while not rows:  # the writer batches: poll the table, not the clock
        assert time.monotonic() < deadline, "the feedback did not reach PostgreSQL within 30 s"
        request_id = answer["request_id"]
        rows = query(stack.database_url, "SELECT clicked_item FROM feedback WHERE request_id = $1", request_id)
        impressions = query(stack.database_url, "SELECT 1 FROM impressions WHERE request_id = $1", request_id)
        rows = rows if impressions else []
    assert rows[0]["clicked_item"] == feedback["clicked_item"]


def test_a_model_published_into_the_mounted_repository_is_hot_swapped(stack: Stack) -> None:
    """The trainer image trains, publishes version 2 into Triton's volume and loads it; NGINX then answers from it."""
    before = _post(stack, "/recommend", {"user_id": "42"}, "42")
    assert before["model_version"] == "1"
    train = (
        "recsys train --data synthetic --model als --refit --out /tmp/als "
        "&& recsys publish /tmp/als --repository /models --load --triton-http triton:8000"
    )
    result = podman(
        *("run", "--rm", "--network", "recsys_default", "--read-only", "--tmpfs", "/tmp", "--tmpfs", "/work"),
        *("-e", f"RECSYS_TRITON_API_KEY={stack.env['RECSYS_TRITON_API_KEY']}", "-v", "recsys_models:/models"),
        *("--entrypoint", "sh", "recsys-trainer:local", "-c", train),
        timeout=900,
    )
    assert "version 2" in " ".join(result.stdout.split()), result.stdout[-2000:]  # what publish --load says
    after = _post(stack, "/recommend", {"user_id": "42"}, "42")
    assert after["model_version"] == "2", after
    assert after["group"] == before["group"]


def test_the_writer_connects_as_a_role_that_is_not_a_superuser(stack: Stack) -> None:
    """The issue-14 review: POSTGRES_USER=recsys made the writer's role the cluster's superuser, so its password
    ran programs on the server (COPY ... TO PROGRAM). The superuser is now `postgres`, its password held by
    PostgreSQL's container alone."""
    check_database_roles(
        f"127.0.0.1:{stack.port('POSTGRES')}", stack.env["RECSYS_DB_PASSWORD"], stack.env["RECSYS_DB_ADMIN_PASSWORD"]
    )
    admin_password = stack.env["RECSYS_DB_ADMIN_PASSWORD"]
    for service in SERVICES:
        env = inspect("container", stack.container(service))["Config"]["Env"]
        holds = any(admin_password in item for item in env)
        assert holds is (service == "postgres"), f"{service}: holds the superuser's password: {holds}"
