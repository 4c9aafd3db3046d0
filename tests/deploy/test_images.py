"""The images (docker/) and the laptop stack (docker/compose.yaml), checked without a Docker engine: hadolint,
the compose schema, and what each Dockerfile promises (pinned bases, a non-root user, a health check, sources
that exist and are not ignored), plus the imports each image's code really makes."""

from __future__ import annotations

import ast
import contextlib
import json
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from deploy_support import ROOT, YAMLLINT_CONFIG, run, tool
from image_support import Layout, lay_out

DOCKER = ROOT / "docker"
DOCKERFILES = {name: DOCKER / f"{name}.Dockerfile" for name in ("triton", "gateway", "feedback", "nginx", "trainer")}
#: Source folders other issues write; a COPY of one that does not exist yet is reported as a skip, not a failure.
PENDING = {"gateway", "feedback", "protos", "nginx"}
#: What the production Triton image's python steps import: the serving/ package, copied whole.
SERVING = ROOT / "serving"
#: Provided by Triton's python backend inside the stub; the production image adds numpy and asyncpg.
NGC_IMPORTS = {"__future__", "numpy", "asyncpg", "triton_python_backend_utils", "serving"}
#: Modules the service images must neither need nor load.
NOT_IN_SERVICES = ("typer", "rich", "torch", "trainer", "matplotlib", "pandas", "scipy")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        values = [args for kw, args in self.instructions if kw == keyword]
        return values[-1] if values else None


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages of a Dockerfile as (keyword, arguments) with continuation lines joined; a base named by an ``ARG``
    before the first ``FROM`` is read as that argument's default (what a plain build uses)."""
    stages: list[Stage] = []
    defaults: dict[str, str] = {}
    logical = re.sub(r"\\\n", " ", path.read_text())
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and not stages:
            name, _, default = args.strip().partition("=")
            defaults[name] = default
        elif keyword == "FROM":
            args = re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), args)
            parts = args.split()
            stages.append(Stage(parts[0], parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None))
        else:
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


def final_stages(stages: list[Stage]) -> list[Stage]:
    """Stages that are images of their own: the last one and every stage no other stage builds on."""
    used = {s.base for s in stages}
    for stage in stages:
        for _, args in stage.instructions:
            used |= set(re.findall(r"(?:--from=|--mount=\S*from=)([^,\s]+)", args))
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
        if stage.base == "scratch":  # an empty stage (torch-wheels: filled by --build-context where one is passed)
            assert not stage.instructions, f"{name}: {stage.name} builds on scratch"
            continue
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
    copied = [args.split() for kw, args in stages["production"].instructions if kw == "COPY"]
    assert copied == [["serving/", "/opt/recsys/serving/"]], "the NGC image takes the serving package, whole"
    assert "PYTHONPATH=/opt/recsys" in (stages["production"].last("ENV") or "")


def test_trainer_image_defaults_to_the_production_base_and_the_pytorch_cpu_index() -> None:
    """Issue 16: base image and package indexes are build arguments, their defaults the production ones; the
    image runs `recsys` (the CronJob gives `python -m scripts.aws loop retrain` as its command) as a job, so its
    health is its exit status (HEALTHCHECK NONE), not a probe."""
    wheels, stage = parse_dockerfile(DOCKERFILES["trainer"])
    assert (wheels.base, wheels.name, wheels.instructions) == ("scratch", "torch-wheels", [])
    assert stage.base == "python:3.11.11-slim-bookworm"
    args = dict(a.partition("=")[::2] for kw, a in stage.instructions if kw == "ARG")
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert args["PIP_INDEX_URL"] == "https://pypi.org/simple"
    runs = " ".join(a for kw, a in stage.instructions if kw == "RUN")
    assert '--index-url "${TORCH_INDEX_URL}" --find-links /wheels torch==2.13.0' in runs
    assert "--mount=type=bind,from=torch-wheels,target=/wheels" in runs
    assert "p['optional-dependencies']['aws']" in runs, "the dependencies' layer comes from pyproject.toml"
    assert 'pip install --no-deps -e ".[aws]"' in runs
    assert json.loads(stage.last("ENTRYPOINT") or "[]") == ["recsys"]
    assert stage.last("HEALTHCHECK") == "NONE"
    copied = {a.split()[0] for kw, a in stage.instructions if kw == "COPY"}
    assert {"trainer/", "triton_models/", "scripts/aws/"} <= copied, "publish copies model.py from triton_models/"


#: Each image's base images as build arguments, with the production defaults (issue 16).
PRODUCTION_BASES = {
    "gateway": {"PYTHON_IMAGE": "python:3.11.11-slim-bookworm"},
    "feedback": {"PYTHON_IMAGE": "python:3.11.11-slim-bookworm"},
    "trainer": {"PYTHON_IMAGE": "python:3.11.11-slim-bookworm"},
    "nginx": {
        "PYTHON_IMAGE": "python:3.11.11-slim-bookworm",
        "NGINX_IMAGE": "nginxinc/nginx-unprivileged:1.27.3-alpine",
    },
    "triton": {"PYTHON_IMAGE": "python:3.11.11-slim-bookworm", "TRITON_IMAGE": "nvcr.io/nvidia/tritonserver:24.10-py3"},
}


@pytest.mark.parametrize("name", DOCKERFILES)
def test_bases_and_package_indexes_are_build_arguments_with_production_defaults(name: str) -> None:
    """scripts/containers.sh builds the images where Docker Hub, NGC and PyTorch's index cannot be reached, by
    arguments only: the Dockerfiles' defaults stay the production ones, and every pip install takes PyPI's index
    from PIP_INDEX_URL and the machine's CA certificate from the optional secret pip-cert."""
    text = DOCKERFILES[name].read_text()
    head = text[: text.index("\nFROM ")]
    declared = dict(re.findall(r"^ARG (\w+)=(\S+)$", head, flags=re.MULTILINE))
    assert {k: declared.get(k) for k in PRODUCTION_BASES[name]} == PRODUCTION_BASES[name]
    froms = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert all(f == "scratch" or f.startswith("${") for f in froms), f"{name}: a base that is not an argument: {froms}"
    for stage in parse_dockerfile(DOCKERFILES[name]):
        for keyword, args in stage.instructions:
            if keyword == "RUN" and "pip install" in args:
                assert "--mount=type=secret,id=pip-cert" in args, f"{name}: {args[:80]}"
                assert "PIP_CERT=/run/secrets/pip-cert" in args
                if "TORCH_INDEX_URL" not in args and "--index-url" in args:
                    assert '--index-url "${PIP_INDEX_URL}"' in args
        indexes = [a for kw, a in stage.instructions if kw == "ARG" and a.startswith(("PIP_INDEX_URL", "TORCH_"))]
        assert all(
            a in ("PIP_INDEX_URL=https://pypi.org/simple", "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu")
            for a in indexes
        ), indexes


STANDINS = sorted((DOCKER / "standin").glob("*.Dockerfile"))


@pytest.mark.parametrize("path", STANDINS, ids=lambda p: p.name)
def test_local_stand_in_bases_pass_hadolint(path: Path) -> None:
    result = run(tool("hadolint"), "--no-color", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


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
    for path in ("serving/models.py", "triton_models/recsys_lookup/model.py", "pyproject.toml", "README.md"):
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
    assert targets == {
        "gateway": ["gateway:8080"],
        "feedback": ["feedback:8090"],
        "triton": ["triton:8002"],
        "loop": ["loop:9108"],  # the training loop: not a compose service (its repository is baked into Triton's image)
    }
    for job in targets.keys() - {"loop"}:
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


def _step_modules() -> set[str]:
    """The serving modules Triton's python steps load at import: what each model.py imports, and so on."""
    todo: set[str] = set()
    for model in (ROOT / "triton_models").glob("*/model.py"):
        todo |= {m for m in _module_level_imports(model, full=True) if m.startswith("serving.")}
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        seen.add(module)
        todo |= {m for m in _module_level_imports(_serving_file(module), full=True) if m.startswith("serving.")} - seen
    return seen


def _serving_file(module: str) -> Path:
    path = ROOT / module.replace(".", "/")
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _module_level_imports(path: Path, *, full: bool = False) -> set[str]:
    """Modules imported by the module's own top-level statements (not inside functions or TYPE_CHECKING)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {alias.name if full else alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module if full else node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted(SERVING.glob("*.py")), ids=lambda p: p.name)
def test_serving_code_parses_on_the_ngc_images_python_3_10(path: Path) -> None:
    """NGC's tritonserver 24.10 runs python models with Ubuntu 22.04's Python 3.10."""
    ast.parse(path.read_text(), feature_version=(3, 10))


def test_what_the_python_steps_load_needs_only_what_the_ngc_image_has() -> None:
    """The production image copies serving/ and adds numpy and asyncpg: the modules the steps import at load time
    must need nothing else (torch only inside a device scorer's import, which production does not run)."""
    loaded = _step_modules()
    assert {"serving.models", "serving.stub"} <= loaded, loaded
    for module in sorted(loaded):
        path = _serving_file(module)
        assert path.is_file(), f"a step imports {module}, which serving/ lacks"
        outside = _module_level_imports(path) - set(sys.stdlib_module_names) - NGC_IMPORTS
        assert not outside, f"{module} imports {outside} at module level, which the production image lacks"


def test_triton_step_models_import_only_the_serving_package() -> None:
    for model in sorted((ROOT / "triton_models").glob("*/model.py")):
        imported = _module_level_imports(model, full=True) - {"__future__"}
        assert imported, f"{model}: imports nothing"
        for module in imported:
            assert module.startswith("serving."), f"{model}: imports {module}, which the images do not copy"
            assert _serving_file(module).is_file(), f"{model}: {module} does not exist"


def _service_layout(service: str, into: Path) -> Layout:
    if not (ROOT / service / "__init__.py").is_file():
        pytest.skip(f"{service}/ is not written yet (another issue)")
    return lay_out(parse_dockerfile(DOCKERFILES[service])[-1].instructions, into)


def _skip_if_missing(result: subprocess.CompletedProcess[str], requirements: Path) -> None:
    if "MISSING" in result.stdout + result.stderr:
        pytest.skip(f"a requirement of {requirements.name} is not installed here: {result.stderr.strip()[-300:]}")


@pytest.mark.parametrize("service", ["gateway", "feedback"])
def test_service_image_imports_its_entry_point_from_its_own_files_and_requirements(
    service: str, tmp_path: Path
) -> None:
    """The image's entry point and what it runs import from only the files the Dockerfile copies and the
    distributions of docker/requirements/<service>.txt (and what they depend on), and load none of typer, rich,
    torch, trainer, matplotlib, pandas or scipy: the image has none of them."""
    layout = _service_layout(service, tmp_path)
    requirements = DOCKER / "requirements" / f"{service}.txt"
    modules = f"{service}.__main__,{service}.main,recsys.core.asgi,uvloop,httptools"
    result = layout.run(requirements, f"import:{modules}", watched=NOT_IN_SERVICES)
    _skip_if_missing(result, requirements)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout
    assert "LOADED []" in result.stdout, result.stdout


@pytest.mark.parametrize("service", ["gateway", "feedback"])
def test_service_image_command_runs_without_the_cli(service: str, tmp_path: Path) -> None:
    """The image's CMD is ``python -m <service>``, and ``--help`` answers from the image's files alone."""
    stages = parse_dockerfile(DOCKERFILES[service])
    assert json.loads(stages[-1].last("CMD") or "[]") == ["python", "-m", service]
    layout = _service_layout(service, tmp_path)
    requirements = DOCKER / "requirements" / f"{service}.txt"
    result = layout.run(requirements, f"run:{service} --help", watched=NOT_IN_SERVICES)
    _skip_if_missing(result, requirements)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"usage: python -m {service}" in result.stdout
    assert "LOADED []" in result.stdout, result.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.parametrize("service", ["gateway", "feedback"])
def test_service_image_starts_and_answers_its_health_check(service: str, tmp_path: Path) -> None:
    """What the container does: ``python -m <service>`` from the image's files and requirements alone, until its
    HEALTHCHECK URL answers (uvicorn's httptools and uvloop included, which only starting the server imports).
    Neither Triton, the writer nor PostgreSQL runs: liveness does not depend on them."""
    layout = _service_layout(service, tmp_path / "image")
    requirements = DOCKER / "requirements" / f"{service}.txt"
    port = _free_port()
    nowhere = f"127.0.0.1:{_free_port()}"  # nothing listens there
    settings = {
        "gateway": {
            "RECSYS_GATEWAY_HOST": "127.0.0.1",
            "RECSYS_GATEWAY_PORT": str(port),
            "RECSYS_GATEWAY_GRPC_PORT": str(_free_port()),
            "RECSYS_TRITON_URL": nowhere,
            "RECSYS_FEEDBACK_URL": f"http://{nowhere}",
        },
        "feedback": {
            "RECSYS_FEEDBACK_HOST": "127.0.0.1",
            "RECSYS_FEEDBACK_PORT": str(port),
            "RECSYS_SPOOL_DIR": str(tmp_path / "spool"),
            "RECSYS_DATABASE_URL": f"postgresql://recsys@{nowhere}/recsys",
        },
    }[service]
    command = layout.python(requirements, f"run:{service}", watched=NOT_IN_SERVICES)
    log = (tmp_path / "service.log").open("w+")
    process = subprocess.Popen(
        command, cwd=layout.workdir, env=layout.process_env(settings), stdout=log, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 60
        status = None
        while status != 200:
            if process.poll() is not None:
                log.seek(0)
                output = log.read()
                if "MISSING" in output:
                    pytest.skip(f"a requirement of {requirements.name} is not installed here")
                pytest.fail(f"python -m {service} exited with {process.returncode}:\n{output[-3000:]}")
            assert time.monotonic() < deadline, f"{service} did not answer /healthz within 60 s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                    status = response.status
            except OSError:
                with contextlib.suppress(subprocess.TimeoutExpired):  # between polls: notice an early exit
                    process.wait(timeout=0.1)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_nginx_split_stage_renders_from_its_own_files(tmp_path: Path) -> None:
    """The nginx image's build stage renders ab_split.conf with only the files it copies and what it pip-installs."""
    split = next(s for s in parse_dockerfile(DOCKERFILES["nginx"]) if s.name == "split")
    layout = lay_out(split.instructions, tmp_path / "image")
    runs = [args for kw, args in split.instructions if kw == "RUN"]
    pip = next(shlex.split(r[r.index("pip install") :]) for r in runs if "pip install" in r)
    installed = [a for a in pip[2:] if a != "--index-url" and not a.startswith(("$", "http"))]
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("\n".join(installed) + "\n")
    code = next(shlex.split(r)[2] for r in runs if r.startswith("python -c"))
    result = layout.run(requirements, f"code:{code.replace('/tmp/ab_split.conf', str(tmp_path / 'ab_split.conf'))}")
    _skip_if_missing(result, requirements)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "split_clients" in (tmp_path / "ab_split.conf").read_text()
