"""``python -m scripts.kube_play``: the local overlay's workloads (k8s/overlays/local) as ``podman kube play`` input,
and the manifests' probes run against the pods as the kubelet would. scripts/containers.sh kube-play drives it.

What podman 4.3 plays: Deployments (one pod each), ConfigMaps (env, envFrom, volumes), PersistentVolumeClaims (named
volumes) and, through podman's own secret store, the keys of Secrets that env ``secretKeyRef`` names (a podman
secret holding ``{"key": base64}``: podman 4.3 stores a ``kind: Secret`` document as YAML and then cannot read it
back). What it does not: StatefulSets (planned here as a one-replica Deployment whose volumeClaimTemplates become
PersistentVolumeClaims), Services (each pod gets a fixed address on a podman network, and every pod resolves the
Services' names to the pods they select through ``hostAliases``), emptyDir volumes as Kubernetes makes them
(podman makes their folder root-owned and not writable by a non-root pod: each is played as a fresh host folder
with Kubernetes's mode, 0777), readiness and startup probes (ignored; liveness probes become podman health checks
that run ``curl`` inside the container, which these images do not ship), and the objects of the cluster itself
(Namespace, ServiceAccount, RBAC, NetworkPolicy, PodDisruptionBudget, HPA): those stay validated offline
(tests/deploy). A workload whose image cannot be had here (Prometheus's) is left out.
"""

from __future__ import annotations

import argparse
import base64
import copy
import ipaddress
import json
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]

#: Objects podman kube play has no use for: validated offline only.
OFFLINE_ONLY = frozenset(
    {
        "Namespace",
        "Service",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }
)
#: Pods start in this order (the database first, the edge last), each played on its own with its address.
ORDER = ("postgres", "triton", "feedback", "gateway", "nginx", "prometheus")


@dataclass
class Plan:
    """Per workload, the documents to play and the pod's address; the secrets to create; what was left out."""

    workloads: dict[str, list[Doc]] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)
    #: Host folders that stand for emptyDir volumes (made fresh, mode 0777, before the pods start).
    empty_dirs: list[str] = field(default_factory=list)

    def pod_spec(self, workload: str) -> Doc:
        deployment = next(d for d in self.workloads[workload] if d["kind"] == "Deployment")
        spec: Doc = deployment["spec"]["template"]["spec"]
        return spec


def _containers(spec: Doc) -> Iterator[Doc]:
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def _as_deployment(stateful: Doc) -> tuple[Doc, list[Doc]]:
    """A StatefulSet as a one-replica Deployment; its claim templates as claims named as the first pod's would be."""
    deployment = copy.deepcopy(stateful)
    deployment["kind"] = "Deployment"
    spec = deployment["spec"]
    templates = spec.pop("volumeClaimTemplates", [])
    for key in ("serviceName", "podManagementPolicy", "updateStrategy", "persistentVolumeClaimRetentionPolicy"):
        spec.pop(key, None)
    spec["replicas"] = 1
    name = stateful["metadata"]["name"]
    claims = []
    volumes = spec["template"]["spec"].setdefault("volumes", [])
    for template in templates:
        claim = f"{template['metadata']['name']}-{name}-0"
        claims.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim},
                "spec": copy.deepcopy(template["spec"]),
            }
        )
        volumes.append({"name": template["metadata"]["name"], "persistentVolumeClaim": {"claimName": claim}})
    return deployment, claims


def _config_maps_used(spec: Doc) -> set[str]:
    names = {v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v}
    for container in _containers(spec):
        names |= {e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e}
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("configMapKeyRef")
            if ref:
                names.add(ref["name"])
    return names


def _secret_keys_used(spec: Doc) -> set[tuple[str, str]]:
    keys = set()
    for container in _containers(spec):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                keys.add((ref["name"], ref["key"]))
    return keys


def plan(
    docs: list[Doc],
    *,
    subnet: str,
    images: dict[str, str],
    available: Callable[[str], bool],
    secret_value: Callable[[str, str], str],
    empty_dir_root: Path,
) -> Plan:
    """The podman kube play input for ``docs`` (a rendered overlay): pure, apart from asking ``available`` whether
    an image can be had and ``secret_value`` for each Secret key a workload reads."""
    result = Plan()
    config_maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    workloads: dict[str, tuple[Doc, list[Doc]]] = {}
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "Deployment":
            workloads[name] = (copy.deepcopy(doc), [])
        elif kind == "StatefulSet":
            workloads[name] = _as_deployment(doc)
        elif kind in OFFLINE_ONLY:
            result.left_out.append(f"{kind}/{name}: not a workload (validated offline)")
        elif kind != "ConfigMap":
            result.left_out.append(f"{kind}/{name}: podman kube play does not take it")
    hosts = ipaddress.ip_network(subnet).hosts()
    next(hosts)  # the gateway address of the podman network
    for name in sorted(workloads, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        deployment, claims = workloads[name]
        spec = deployment["spec"]["template"]["spec"]
        missing = []
        for container in _containers(spec):
            container["image"] = images.get(container["image"], container["image"])
            if not available(container["image"]):
                missing.append(container["image"])
        if missing:
            result.left_out.append(f"Deployment/{name}: its image {', '.join(missing)} cannot be had here")
            continue
        for volume in spec.get("volumes", []):
            if "emptyDir" in volume:
                folder = str(empty_dir_root / name / volume["name"])
                del volume["emptyDir"]
                volume["hostPath"] = {"path": folder, "type": "DirectoryOrCreate"}
                result.empty_dirs.append(folder)
        used = sorted(_config_maps_used(spec) & config_maps.keys())
        result.workloads[name] = [copy.deepcopy(config_maps[c]) for c in used] + claims + [deployment]
        result.addresses[name] = str(next(hosts))
        for secret, key in sorted(_secret_keys_used(spec)):
            result.secrets.setdefault(secret, {})[key] = secret_value(secret, key)
    # Services: every pod resolves each Service's name to the address of the pod it selects.
    aliases: dict[str, list[str]] = {}
    for doc in docs:
        if doc["kind"] != "Service":
            continue
        selector = doc["spec"].get("selector", {})
        for name in result.workloads:
            labels = result.workloads[name][-1]["spec"]["template"]["metadata"].get("labels", {})
            if selector and selector.items() <= labels.items():
                aliases.setdefault(result.addresses[name], []).append(doc["metadata"]["name"])
    host_aliases = [{"ip": ip, "hostnames": sorted(names)} for ip, names in sorted(aliases.items())]
    for name in result.workloads:
        result.pod_spec(name)["hostAliases"] = host_aliases
    return result


# --- probes, as the kubelet runs them --------------------------------------------------------------------------


def _port(container: Doc, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return int(next(p["containerPort"] for p in container.get("ports", []) if p.get("name") == port))


def container_name(workload: str, container: str) -> str:
    """podman 4.3 names a Deployment's pod ``<name>-pod-0`` and its containers ``<pod>-<container>``."""
    return f"{workload}-pod-0-{container}"


def probe_once(workload: str, address: str, container: Doc, probe: Doc, podman: list[str]) -> str | None:
    """One try of a probe; None when it passes, else why not. httpGet and tcpSocket from outside the pod, as the
    kubelet does; exec inside the container."""
    timeout = float(probe.get("timeoutSeconds", 1))
    if "httpGet" in probe:
        get = probe["httpGet"]
        url = f"http://{address}:{_port(container, get['port'])}{get.get('path', '/')}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return None if 200 <= response.status < 400 else f"GET {url}: {response.status}"
        except urllib.error.HTTPError as exc:
            return f"GET {url}: {exc.code}"
        except OSError as exc:
            return f"GET {url}: {exc}"
    if "tcpSocket" in probe:
        port = _port(container, probe["tcpSocket"]["port"])
        try:
            socket.create_connection((address, port), timeout=timeout).close()
            return None
        except OSError as exc:
            return f"tcp {address}:{port}: {exc}"
    command = probe["exec"]["command"]
    name = container_name(workload, container["name"])
    done = subprocess.run([*podman, "exec", name, *command], capture_output=True, text=True, check=False)
    return None if done.returncode == 0 else f"{' '.join(command)} in {name}: exit {done.returncode}"


def wait_ready(plan_: Plan, *, kinds: tuple[str, ...], timeout: float, podman: list[str]) -> dict[str, str | None]:
    """Runs each container's probes of ``kinds`` until all pass or ``timeout`` passes; the last verdict of each."""
    verdicts: dict[str, str | None] = {}
    deadline = time.monotonic() + timeout
    while True:
        for workload, address in plan_.addresses.items():
            for container in plan_.pod_spec(workload)["containers"]:
                for kind in kinds:
                    if kind in container:
                        key = f"{workload}/{container['name']} {kind}"
                        if verdicts.get(key, "") is not None:
                            verdicts[key] = probe_once(workload, address, container, container[kind], podman)
        if all(v is None for v in verdicts.values()) or time.monotonic() > deadline:
            return verdicts
        time.sleep(1)  # the probes' period: they are tried again, as the kubelet does


# --- files and commands ----------------------------------------------------------------------------------------


def write(plan_: Plan, out: Path) -> None:
    """One YAML per workload, its address beside it, each secret as podman 4.3 reads it, and a summary."""
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.yaml"), *out.glob("*.ip")]:
        old.unlink()
    for index, (name, docs) in enumerate(plan_.workloads.items()):
        (out / f"{index}-{name}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
        (out / f"{index}-{name}.ip").write_text(plan_.addresses[name] + "\n")
    secret_dir = out / "secrets"
    secret_dir.mkdir(mode=0o700, exist_ok=True)
    for old in secret_dir.glob("*.json"):
        old.unlink()
    for name, values in plan_.secrets.items():
        path = secret_dir / f"{name}.json"
        path.touch(mode=0o600)
        path.write_text(json.dumps({k: base64.b64encode(v.encode()).decode() for k, v in values.items()}))
    for folder in map(Path, plan_.empty_dirs):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        folder.chmod(0o777)
    (out / "plan.json").write_text(
        json.dumps(
            {
                "addresses": plan_.addresses,
                "left_out": plan_.left_out,
                "secrets": sorted(plan_.secrets),
                "empty_dirs": plan_.empty_dirs,
                "volumes": volumes(plan_),
            },
            indent=2,
        )
        + "\n"
    )


def volumes(plan_: Plan) -> list[str]:
    """The named volumes the played pods get: one per claim, and one per ConfigMap mounted as a volume."""
    names = set()
    for workload in plan_.workloads:
        for volume in plan_.pod_spec(workload).get("volumes", []):
            if "persistentVolumeClaim" in volume:
                names.add(volume["persistentVolumeClaim"]["claimName"])
            elif "configMap" in volume:
                names.add(volume["configMap"]["name"])
    return sorted(names)


def load(out: Path) -> Plan:
    """The plan :func:`write` wrote (secret values included)."""
    summary = json.loads((out / "plan.json").read_text())
    result = Plan(addresses=summary["addresses"], left_out=summary["left_out"], empty_dirs=summary["empty_dirs"])
    for path in sorted(out.glob("*.yaml")):
        name = path.stem.split("-", 1)[1]
        result.workloads[name] = list(yaml.safe_load_all(path.read_text()))
    for name in summary["secrets"]:
        raw = json.loads((out / "secrets" / f"{name}.json").read_text())
        result.secrets[name] = {k: base64.b64decode(v).decode() for k, v in raw.items()}
    return result


def _secret_value(password: str) -> Callable[[str, str], str]:
    made: dict[tuple[str, str], str] = {}

    def value(secret: str, key: str) -> str:
        if (secret, key) == ("recsys-db", "password"):
            return password
        if (secret, key) == ("recsys-db", "url"):
            credentials = f"recsys:{password}"
            return f"postgresql://{credentials}@postgres:5432/recsys"
        return made.setdefault((secret, key), secrets.token_hex(16))

    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.kube_play", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    render = sub.add_parser("plan", help="render the overlay and write the kube play files into OUT")
    render.add_argument("overlay", type=Path)
    render.add_argument("out", type=Path)
    render.add_argument("--subnet", required=True)
    render.add_argument("--image", action="append", default=[], help="FROM=TO: a base replaced by a stand-in")
    render.add_argument("--db-password", default="")
    ready = sub.add_parser("ready", help="run the played pods' probes until they pass")
    ready.add_argument("out", type=Path)
    ready.add_argument("--timeout", type=float, default=300)
    ready.add_argument("--probes", default="readinessProbe,livenessProbe,startupProbe")
    args = parser.parse_args(argv)
    podman = ["podman"]
    if args.command == "plan":
        rendered = subprocess.run(
            [str(Path(sys.executable).parent / "kubectl"), "kustomize", str(args.overlay)],
            capture_output=True,
            text=True,
            check=False,
        )
        if rendered.returncode != 0:
            print(f"error: kubectl kustomize {args.overlay}: {rendered.stderr.strip()}", file=sys.stderr)
            return 2
        docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
        images = dict(i.split("=", 1) for i in args.image)

        def available(image: str) -> bool:
            return subprocess.run([*podman, "image", "exists", image], check=False).returncode == 0

        result = plan(
            docs,
            subnet=args.subnet,
            images=images,
            available=available,
            secret_value=_secret_value(args.db_password or secrets.token_hex(16)),
            empty_dir_root=args.out.resolve() / "empty-dirs",
        )
        write(result, args.out)
        offline = sorted({line.split("/")[0] for line in result.left_out if line.endswith("(validated offline)")})
        print(f"not played (validated offline): {', '.join(offline)}", file=sys.stderr)
        for line in result.left_out:
            if not line.endswith("(validated offline)"):
                print(f"not played: {line}", file=sys.stderr)
        return 0
    verdicts = wait_ready(load(args.out), kinds=tuple(args.probes.split(",")), timeout=args.timeout, podman=podman)
    for key, verdict in sorted(verdicts.items()):
        print(f"{key}: {'passes' if verdict is None else 'FAILS: ' + verdict}")
    return 0 if all(v is None for v in verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
