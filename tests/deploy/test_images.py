"""The images (docker/) and the laptop stack (docker/compose.yaml), checked without a Docker engine: hadolint,
the compose schema, and what each Dockerfile promises (pinned bases, a non-root user, a health check, sources
that exist and are not ignored), plus the imports each image's code really makes."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from deploy_support import ROOT, YAMLLINT_CONFIG, run, tool

DOCKER = ROOT / "docker"
DOCKERFILES = {name: DOCKER / f"{name}.Dockerfile" for name in ("triton", "gateway", "feedback", "nginx")}
#: Source folders other issues write; a COPY of one that does not exist yet is reported as a skip, not a failure.
PENDING = {"gateway", "feedback", "protos", "nginx"}
#: The trainer files the production Triton image copies next to its python steps.
TRITON_STEP_CODE = (
    "trainer/__init__.py",
    "trainer/run_files.py",
    "trainer/serving_steps.py",
    "trainer/weights_core.py",
    "trainer/serving_live.py",
)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        values = [args for kw, args in self.instructions if kw == keyword]
        return values[-1] if values else None


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages of a Dockerfile as (keyword, arguments) with continuation lines joined."""
    stages: list[Stage] = []
    logical = re.sub(r"\\\n", " ", path.read_text())
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            stages.append(Stage(parts[0], parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None))
        else:
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


def final_stages(stages: list[Stage]) -> list[Stage]:
    """Stages that are images of their own: the last one and every stage no other stage builds on."""
    used = {s.base for s in stages}
    for stage in stages:
        used |= {m.group(1) for kw, args in stage.instructions if (m := re.search(r"--from=(\S+)", args))}
    return [s for s in stages if s is stages[-1] or (s.name is not None and s.name not in used)]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_passes_hadolint(name: str) -> None:
    result = run(tool("hadolint"), "--no-color", str(DOCKERFILES[name]))
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_finds_what_it_should(tmp_path: Path) -> None:
    """Negative control: an unpinned base and an unpinned pip install fail."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    result = run(tool("hadolint"), "--no-color", str(bad))
    assert result.returncode != 0
    assert "DL3006" in result.stdout
    assert "DL3013" in result.stdout


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_image_is_pinned_non_root_and_health_checked(name: str) -> None:
    stages = parse_dockerfile(DOCKERFILES[name])
    for stage in stages:
        image, _, tag = stage.base.rpartition(":")
        assert image, f"{name}: base {stage.base} has no tag"
        assert re.search(r"\d", tag), f"{name}: base {stage.base} is not pinned to a version"
    for stage in final_stages(stages):
        label = f"{name} ({stage.name or 'default'})"
        user = stage.last("USER")
        assert user is not None, f"{label}: no USER"
        assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), f"{label}: USER {user} is not a numeric non-root uid"
        assert stage.last("HEALTHCHECK") is not None, f"{label}: no HEALTHCHECK"
        assert stage.last("CMD") is not None, f"{label}: no CMD"


def test_triton_has_the_local_and_the_ngc_production_targets() -> None:
    stages = {s.name: s for s in parse_dockerfile(DOCKERFILES["triton"])}
    assert stages["production"].base == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert parse_dockerfile(DOCKERFILES["triton"])[-1].name == "production", "production must be the default target"
    assert "recsys serve triton" in " ".join(json.loads(stages["local"].last("CMD") or "[]"))
    command = " ".join(json.loads(stages["production"].last("CMD") or "[]"))
    assert "--model-control-mode=explicit" in command
    assert "--load-model=recsys_a" in command
    assert "--load-model=recsys_b" in command
    copied = stages["production"].last("COPY") or ""
    assert copied.split()[:-1] == list(TRITON_STEP_CODE)


def _copy_sources(path: Path) -> list[str]:
    sources = []
    for stage in parse_dockerfile(path):
        for keyword, args in stage.instructions:
            if keyword == "COPY" and "--from" not in args:
                sources += [a for a in args.split()[:-1] if not a.startswith("--")]
    return sources


def _glob_regex(pattern: str) -> str:
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regex over slash-separated paths."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out.append(pattern[i : end + 1])
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def _ignored_by_dockerignore(relative: str) -> bool:
    """Whether a path (or a folder above it) is excluded from the build context (no ``!`` exceptions here)."""
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()]
    for pattern in (p for p in patterns if p and not p.startswith("#")):
        assert not pattern.startswith("!"), "exceptions are not understood by this check"
        if re.fullmatch(f"{_glob_regex(pattern.strip('/'))}(?:/.*)?", relative.rstrip("/")):
            return True
    return False


@pytest.mark.parametrize("name", DOCKERFILES)
def test_copied_sources_exist_and_reach_the_build_context(name: str) -> None:
    pending = []
    for source in _copy_sources(DOCKERFILES[name]):
        assert not _ignored_by_dockerignore(source), f"{name}: {source} is excluded by .dockerignore"
        if not (ROOT / source).exists():
            top = source.strip("/").split("/")[0]
            assert top in PENDING, f"{name}: COPY {source}, which does not exist"
            pending.append(source)
    if pending:
        pytest.skip(f"{name}: {', '.join(pending)} not written yet (other issues)")


def test_dockerignore_keeps_local_state_out() -> None:
    for path in (".venv", ".git", "runs", "triton_models/recsys_lookup/3", ".cache/triton"):
        assert _ignored_by_dockerignore(path), path
    for path in ("trainer/serving_steps.py", "triton_models/recsys_lookup/model.py", "pyproject.toml", "README.md"):
        assert not _ignored_by_dockerignore(path), path


# --- the laptop stack --------------------------------------------------------------------------------------------


def compose() -> dict[str, object]:
    data: dict[str, object] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return data


def test_compose_file_matches_the_compose_spec() -> None:
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(DOCKER / "compose.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_folder_passes_yamllint() -> None:
    result = run(tool("yamllint"), "--strict", "-d", YAMLLINT_CONFIG, "docker", ".github")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_services_are_built_healthy_local_only_and_secret_free() -> None:
    text = (DOCKER / "compose.yaml").read_text()
    services: dict[str, dict[str, object]] = compose()["services"]  # type: ignore[assignment]
    built = {}
    for name, service in services.items():
        assert service.get("read_only") is True, f"{name}: writable root filesystem"
        for port in service.get("ports", []):  # type: ignore[attr-defined]
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is published beyond this machine"
        build = service.get("build")
        if isinstance(build, dict):
            dockerfile = (DOCKER / build["context"] / build["dockerfile"]).resolve()
            assert dockerfile.is_file(), f"{name}: {dockerfile}"
            stages = parse_dockerfile(dockerfile)
            if "target" in build:
                assert build["target"] in {s.name for s in stages}
            built[name] = stages
            assert service["image"] == f"recsys-{name}:local"
        has_check = "healthcheck" in service or (
            name in built and any(s.last("HEALTHCHECK") for s in final_stages(built[name]))
        )
        assert has_check or name == "grafana", f"{name}: no health check"
        for dependency, condition in dict(service.get("depends_on", {})).items():  # type: ignore[call-overload]
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}"
    assert set(built) == {"triton", "gateway", "feedback", "nginx"}
    # The database password is only ever interpolated from the environment, and required.
    assert re.findall(r"RECSYS_DB_PASSWORD[^}]*", text)
    assert all(":?" in m for m in re.findall(r"\$\{RECSYS_DB_PASSWORD[^}]*\}", text))


def test_compose_mounts_exist_or_are_written_by_other_issues() -> None:
    pending = []
    for name, service in compose()["services"].items():  # type: ignore[attr-defined]
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                path = (DOCKER / source).resolve()
                if not path.exists():
                    assert path.is_relative_to(ROOT / "grafana"), f"{name}: {source} does not exist"
                    pending.append(source)
    if pending:
        pytest.skip(f"{', '.join(pending)} not written yet (grafana/, another issue)")


def test_compose_prometheus_scrapes_the_compose_services_under_the_contract_jobs() -> None:
    """The stack mounts grafana/prometheus/ (another issue's files): its static targets must be this file's
    services on their metrics ports, under the contract's job names."""
    config_path = ROOT / "grafana" / "prometheus" / "prometheus.yml"
    if not config_path.is_file():
        pytest.skip("grafana/prometheus/prometheus.yml is not written yet (another issue)")
    services = compose()["services"]
    targets = {
        job["job_name"]: [t for c in job["static_configs"] for t in c["targets"]]
        for job in yaml.safe_load(config_path.read_text())["scrape_configs"]
    }
    assert targets == {"gateway": ["gateway:8080"], "feedback": ["feedback:8090"], "triton": ["triton:8002"]}
    for job in targets:
        assert job in services  # type: ignore[operator]


def _render_nginx_like_the_image(prefix: Path) -> None:
    """What the image does at start, here: envsubst of the defined NGINX_* variables (Template.safe_substitute
    leaves NGINX's own $names alone, as envsubst does) over the template and the split rendered from the
    experiment, into the prefix's conf/ folder."""
    from string import Template

    from gateway.experiment import load_experiment
    from recsys.stack.nginx import render_split

    stages = parse_dockerfile(DOCKERFILES["nginx"])
    env_line = stages[-1].last("ENV") or ""
    env = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', env_line))
    # `gateway` resolves inside compose and the cluster, not here: the same upstream line, by address.
    env = {k: v.strip('"').replace("gateway:", "127.0.0.1:") for k, v in env.items()}
    for sub in ("conf", "logs", "tmp"):
        (prefix / sub).mkdir(parents=True)
    split = render_split(load_experiment(ROOT / "gateway" / "experiment.yaml"))
    for name, text in (("nginx.conf", (ROOT / "nginx" / "nginx.conf.template").read_text()), ("ab_split.conf", split)):
        (prefix / "conf" / name).write_text(Template(text).safe_substitute(env))
    assert "${NGINX_" not in (prefix / "conf" / "nginx.conf").read_text()


def test_nginx_image_configuration_passes_nginx_t(tmp_path: Path) -> None:
    if not (ROOT / "nginx" / "nginx.conf.template").is_file() or not (ROOT / "gateway" / "experiment.py").is_file():
        pytest.skip("nginx/ or gateway/ is not written yet (other issues)")
    nginx = tool("nginx") if (Path(sys.executable).parent / "nginx").is_file() else "/usr/sbin/nginx"
    if not Path(nginx).is_file():
        pytest.skip("nginx is not installed (apt-get install nginx)")
    _render_nginx_like_the_image(tmp_path)
    result = run(nginx, "-t", "-p", f"{tmp_path}/", "-c", "conf/nginx.conf", "-e", "/dev/stderr")
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


# --- what the images' code imports ------------------------------------------------------------------------------


def _module_level_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("relative", TRITON_STEP_CODE)
def test_code_copied_into_the_ngc_image_runs_on_its_python_3_10(relative: str) -> None:
    """NGC's tritonserver 24.10 runs python models with Ubuntu 22.04's Python 3.10; the image adds numpy and asyncpg."""
    path = ROOT / relative
    ast.parse(path.read_text(), feature_version=(3, 10))
    outside = _module_level_imports(path) - set(sys.stdlib_module_names) - {"__future__", "numpy", "asyncpg", "trainer"}
    assert not outside, f"{relative} imports {outside} at module level, which the production image lacks"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("trainer."):
            assert f"{node.module.replace('.', '/')}.py" in TRITON_STEP_CODE, f"{relative} needs {node.module}"


def test_triton_step_models_import_only_the_copied_code() -> None:
    for model in sorted((ROOT / "triton_models").glob("*/model.py")):
        for node in ast.walk(ast.parse(model.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("trainer."):
                assert f"{node.module.replace('.', '/')}.py" in TRITON_STEP_CODE, f"{model}: {node.module}"


IMPORT_GUARD = textwrap.dedent(
    """
    import importlib, importlib.abc, importlib.metadata as md, re, sys
    from packaging.requirements import Requirement

    first_party, requirements, packages = sys.argv[1].split(","), sys.argv[2], sys.argv[3].split(",")

    def closure(lines):
        seen, todo = set(), [(Requirement(l), ()) for l in lines]
        while todo:
            req, _ = todo.pop()
            name = re.sub(r"[-_.]+", "-", req.name).lower()
            key = (name, tuple(sorted(req.extras)))
            if key in seen:
                continue
            seen.add(key)
            try:
                dist = md.distribution(req.name)
            except md.PackageNotFoundError:
                sys.exit(f"MISSING {req.name}")
            for spec in dist.requires or []:
                sub = Requirement(spec)
                envs = [{"extra": e} for e in req.extras] or [{"extra": ""}]
                if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                    todo.append((sub, ()))
        return {name for name, _ in seen}

    lines = [l.split("#")[0].strip() for l in open(requirements)]
    allowed = closure([l for l in lines if l])
    owners = md.packages_distributions()

    class Guard(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            top = fullname.split(".")[0]
            if "." in fullname or top in sys.stdlib_module_names or top in first_party:
                return None
            dists = {re.sub(r"[-_.]+", "-", d).lower() for d in owners.get(top, [])}
            if dists and not dists & allowed:
                raise ImportError(f"{top} ({', '.join(sorted(dists))}) is not in {requirements}")
            return None

    sys.meta_path.insert(0, Guard())
    for module in packages:
        importlib.import_module(module)
    print("OK")
    """
)


@pytest.mark.parametrize(
    "service",
    ["gateway", "feedback"],
)
def test_service_imports_nothing_beyond_its_image_requirements(service: str) -> None:
    """Imports what `recsys serve <service>` imports (the CLI, then <service>.main) while only the distributions of
    docker/requirements/<service>.txt, and what they depend on, can be imported: torch and the rest of the
    trainer's stack are not in that image."""
    if not (ROOT / service / "__init__.py").is_file():
        pytest.skip(f"{service}/ is not written yet (another issue)")
    requirements = DOCKER / "requirements" / f"{service}.txt"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            IMPORT_GUARD,
            "recsys,trainer,gateway,feedback,protos",
            str(requirements),
            f"recsys.cli,{service}.main",
        ],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.stdout.startswith("MISSING") or "MISSING" in result.stderr:
        pytest.skip(f"a requirement of {requirements.name} is not installed here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout
