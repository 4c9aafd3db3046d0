"""The real NGINX in front of the gateways: the A/B split agrees with the gateway's own hash, headers cannot be
spoofed through it, limits answer in JSON."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import httpx
import pytest

from recsys.stack.local import LocalStack, free_port
from recsys.stack.nginx import LocalNginx, render_split

pytestmark = pytest.mark.stack


def test_thousand_ids_land_in_the_same_group_through_nginx_and_without_it(stack: LocalStack) -> None:
    groups: Counter[str] = Counter()
    with (
        httpx.Client(base_url=stack.nginx_url, timeout=10) as nginx,
        httpx.Client(base_url=stack.gateway_url, timeout=10) as direct,
    ):
        for n in range(1000):
            user = f"listener-{n}"
            via_nginx = nginx.post("/recommend", json={"user_id": user, "top_k": 1}, headers={"X-User-Id": user})
            assert via_nginx.status_code == 200, via_nginx.text
            without = direct.post("/recommend", json={"user_id": user, "top_k": 1})
            assert via_nginx.json()["group"] == without.json()["group"] == stack.experiment.assign(user)
            groups[via_nginx.json()["group"]] += 1
    assert set(groups) == set(stack.experiment.group_names)
    assert all(350 <= count <= 650 for count in groups.values()), groups  # 50/50 within ~10 sigma


def _mismatches(stack: LocalStack) -> float:
    total = 0.0
    for n in range(stack.config.gateways):
        text = httpx.get(f"http://127.0.0.1:{stack.gateway_port(n)}/metrics").text
        total += next(float(x.split()[1]) for x in text.splitlines() if x.startswith("ab_group_mismatch_total "))
    return total


def test_query_and_cookie_keys_and_a_spoofed_group_header_is_overwritten(stack: LocalStack) -> None:
    before = _mismatches(stack)
    for n in range(40):
        user = f"q-{n}"
        by_query = httpx.post(f"{stack.nginx_url}/recommend?user_id={user}", json={"user_id": user})
        by_cookie = httpx.post(f"{stack.nginx_url}/recommend", json={"user_id": user}, cookies={"uid": user})
        wrong = "A" if stack.experiment.assign(user) == "B" else "B"
        spoofed = httpx.post(
            f"{stack.nginx_url}/recommend", json={"user_id": user}, headers={"X-User-Id": user, "X-AB-Group": wrong}
        )
        expected = stack.experiment.assign(user)
        assert by_query.json()["group"] == by_cookie.json()["group"] == spoofed.json()["group"] == expected
    assert _mismatches(stack) == before  # NGINX replaced the spoofed header: the gateways never saw it


def test_access_log_is_json_lines_with_group_and_upstream_time(stack: LocalStack) -> None:
    httpx.post(f"{stack.nginx_url}/recommend", json={"user_id": "7"}, headers={"X-User-Id": "7"})
    last = json.loads(stack.nginx_site.access_log.read_text().splitlines()[-1])
    assert last["group"] == stack.experiment.assign("7")
    assert last["status"] == 200
    assert float(last["upstream_time"]) >= 0
    assert last["uri"] == "/recommend"


def test_oversized_body_gets_json_413_from_nginx(stack: LocalStack) -> None:
    response = httpx.post(
        f"{stack.nginx_url}/recommend", content=b"{" + b" " * 40000 + b"}", headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"


def test_flood_above_the_rate_limit_gets_json_429(stack: LocalStack, tmp_path: Path) -> None:
    strict = LocalNginx(
        prefix=tmp_path / "nginx",
        port=free_port(),
        upstreams=[stack.gateway_url.removeprefix("http://")],
        experiment=stack.experiment,
        rate_per_s=5,
        burst=5,
    )
    with strict.process(), httpx.Client(base_url=strict.url, timeout=10) as client:
        statuses = Counter(
            client.post("/recommend", json={"user_id": "1"}, headers={"X-User-Id": "1"}).status_code for _ in range(60)
        )
        limited = client.post("/recommend", json={"user_id": "1"})
    assert statuses[200] >= 5
    assert statuses[429] >= 30
    assert set(statuses) <= {200, 429}
    if limited.status_code == 429:
        assert limited.json()["error"]["code"] == "rate_limited"


def test_split_block_renders_shares_in_order_with_the_rest_last(stack: LocalStack) -> None:
    block = render_split(stack.experiment)
    assert 'split_clients "${ab_key}" $ab_split {' in block
    assert "    50% A;" in block
    assert "    * B;" in block
