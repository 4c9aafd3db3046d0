"""The built images themselves (issue 16): what the gateway and writer images hold (no torch, no trainer code),
each image's user and health check, and the torch build of the images that train."""

from __future__ import annotations

import json

import pytest
from containers_support import IMAGES, build_images, gate, inspect, podman

pytestmark = gate

#: Looked for in the service images, as installed distributions, importable modules and folders anywhere on disk.
NOT_IN_SERVICES = ("torch", "trainer", "typer", "rich", "pandas", "scipy", "matplotlib", "onnxruntime", "numba")

#: Run inside a service image by its own Python: the distributions installed, the modules importable, and every
#: file or folder on the image's disk named like the project's trainer or like torch.
SURVEY = """
import importlib.metadata as md, importlib.util, json, os, sys
names = sys.argv[1].split(",")
found = []
for top, dirs, files in os.walk("/"):
    if top.startswith(("/proc", "/sys", "/dev")):
        dirs[:] = []
        continue
    found += [os.path.join(top, d) for d in dirs if d in ("trainer", "torch")]
    found += [os.path.join(top, f) for f in files if f.startswith(("torch-", "libtorch"))]
print(json.dumps({
    "distributions": sorted({(d.metadata["Name"] or "").lower() for d in md.distributions()}),
    "importable": [n for n in names if importlib.util.find_spec(n) is not None],
    "paths": found,
}))
"""


@pytest.fixture(scope="module", autouse=True)
def images() -> None:
    build_images()


@pytest.mark.parametrize("service", ["gateway", "feedback"])
def test_service_image_holds_no_torch_and_no_trainer_code(service: str) -> None:
    image = f"recsys-{service}:local"
    result = podman("run", "--rm", "--network", "none", image, "python", "-c", SURVEY, ",".join(NOT_IN_SERVICES))
    survey = json.loads(result.stdout.strip().splitlines()[-1])
    assert "fastapi" in survey["distributions"], survey  # the survey saw the installed packages at all
    assert not set(NOT_IN_SERVICES) & set(survey["distributions"]), survey["distributions"]
    assert survey["importable"] == [], f"{image} can import {survey['importable']}"
    assert survey["paths"] == [], f"{image} holds {survey['paths']}"


@pytest.mark.parametrize("service", ["gateway", "feedback"])
def test_service_image_runs_its_entry_point(service: str) -> None:
    """The image's own command, with --help: it imports the service from the image's files alone."""
    config = inspect("image", f"recsys-{service}:local")["Config"]
    assert config["Cmd"] == ["python", "-m", service]
    result = podman("run", "--rm", "--network", "none", f"recsys-{service}:local", "python", "-m", service, "--help")
    assert f"usage: python -m {service}" in result.stdout


@pytest.mark.parametrize("name", IMAGES)
def test_image_runs_as_its_non_root_user_with_its_health_check(name: str) -> None:
    image = f"recsys-{name}:local"
    data = inspect("image", image)
    config = data["Config"]
    user = config.get("User", "")
    assert user, f"{image} names no user"
    assert user.split(":")[0] not in ("0", "root"), f"{image} runs as {user!r}"
    uid = podman("run", "--rm", "--network", "none", "--entrypoint", "id", image, "-u").stdout.strip()
    assert uid == user.split(":")[0], f"{image}: id -u says {uid}, the image says {user}"
    check = (data.get("Healthcheck") or {}).get("Test") or []  # kept only in Docker's image format
    if name == "trainer":
        assert check in ([], ["NONE"]), "a batch job: judged by its exit status"
    else:
        assert check, f"{image}: no health check"
        assert check[0] in ("CMD", "CMD-SHELL"), check


@pytest.mark.parametrize("name", ["triton", "trainer"])
def test_training_images_hold_torch_s_cpu_build(name: str) -> None:
    code = "import torch; print(torch.__version__, torch.version.cuda)"
    result = podman("run", "--rm", "--network", "none", "--entrypoint", "python", f"recsys-{name}:local", "-c", code)
    assert result.stdout.split() == ["2.13.0+cpu", "None"]


def test_triton_image_holds_a_published_model() -> None:
    """What the local image trains and publishes at build time: the laptop stack answers without any setup."""
    code = (
        "from pathlib import Path; from trainer.triton.repository import published_families, versions; "
        "print({f.name: versions(Path('/models'), f) for f in published_families(Path('/models'))})"
    )
    result = podman("run", "--rm", "--network", "none", "recsys-triton:local", "python", "-c", code)
    assert "{'factor': [1]" in result.stdout, result.stdout
