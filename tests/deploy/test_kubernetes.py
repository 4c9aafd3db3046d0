"""The Kubernetes manifests: every overlay renders, passes kubernetes-validate --strict and yamllint, and keeps
the promises of issue 6 (probes, limits, non-root, HPAs, PDBs, network isolation, GPU + IRSA on EKS, no Secret
written), checked on the rendered objects."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import OVERLAYS, ROOT, YAMLLINT_CONFIG, objects, rendered, run, tool

from scripts.aws.names import (
    GPU_TAINT_KEY,
    IMAGES,
    KUBERNETES_VERSION,
    NAMESPACE,
    NODE_POOL_LABEL,
    TRITON_ROLE,
    TRITON_SERVICE_ACCOUNT,
)

Obj = dict[str, Any]
SERVICES = ("gateway", "triton", "feedback", "nginx")
WORKLOAD_KINDS = ("Deployment", "StatefulSet")


def of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def named(objs: list[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def workloads(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["kind"] in WORKLOAD_KINDS]


def pod_labels(workload: Obj) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert "matchExpressions" not in selector, "the checks here understand matchLabels only"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


# --- rendering and validators -----------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes_kubernetes_validate_strict(overlay: str, tmp_path: Path) -> None:
    validate = tool("kubernetes-validate")
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(rendered(overlay))
    result = run(validate, "--strict", "--no-warn", "-k", f"{KUBERNETES_VERSION}.0", str(manifest))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout


def test_strict_validation_catches_a_misspelt_field(tmp_path: Path) -> None:
    """The validator is no rubber stamp: one unknown field in a rendered Deployment fails it."""
    validate = tool("kubernetes-validate")
    gateway = named(objects("local"), "Deployment", "gateway")
    gateway["spec"]["template"]["spec"]["containers"][0]["readynessProbe"] = {"tcpSocket": {"port": 8080}}
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(gateway))
    result = run(validate, "--strict", "--no-warn", "-k", f"{KUBERNETES_VERSION}.0", str(broken))
    assert result.returncode != 0
    assert "readynessProbe" in result.stdout + result.stderr


def test_manifests_pass_yamllint() -> None:
    result = run(tool("yamllint"), "--strict", "-d", YAMLLINT_CONFIG, "k8s")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_overlay_passes_yamllint(overlay: str, tmp_path: Path) -> None:
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(rendered(overlay))
    # kustomize writes block sequences unindented; everything else is held to the same rules as the sources.
    config = YAMLLINT_CONFIG.replace("truthy:", "indentation: {spaces: 2, indent-sequences: whatever}, truthy:")
    result = run(tool("yamllint"), "--strict", "-d", config, str(manifest))
    assert result.returncode == 0, result.stdout + result.stderr


# --- workloads ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_probed_limited_and_unprivileged(overlay: str) -> None:
    problems = []
    for workload in workloads(objects(overlay)):
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        context = pod.get("securityContext", {})
        if context.get("runAsNonRoot") is not True or context.get("runAsUser") == 0:
            problems.append(f"{name}: pod may run as root")
        if context.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: no RuntimeDefault seccomp profile")
        for container in pod["containers"]:
            where = f"{name}/{container['name']}"
            security = container.get("securityContext", {})
            if security.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: privilege escalation allowed")
            if security.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: writable root filesystem")
            if security.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{where}: capabilities not dropped")
            problems.extend(f"{where}: no {p}" for p in ("readinessProbe", "livenessProbe") if p not in container)
            resources = container.get("resources", {})
            for bound, resource in itertools.product(("requests", "limits"), ("cpu", "memory")):
                if resource not in resources.get(bound, {}):
                    problems.append(f"{where}: no {resource} {bound}")
            port_names = {p["name"] for p in container.get("ports", []) if "name" in p}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                handler = container.get(probe, {})
                port = (handler.get("httpGet") or handler.get("tcpSocket") or {}).get("port")
                if isinstance(port, str) and port not in port_names:
                    problems.append(f"{where}: {probe} names port {port!r}, not one of {sorted(port_names)}")
            image = container["image"]
            tag = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else ""
            if not tag or tag == "latest":
                problems.append(f"{where}: image {image} has no fixed tag")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_service_has_an_hpa_and_a_pdb_that_match_it(overlay: str) -> None:
    objs = objects(overlay)
    for service in SERVICES:
        workload = next(w for w in workloads(objs) if w["metadata"]["name"] == service)
        hpa = named(objs, "HorizontalPodAutoscaler", service)
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == (workload["kind"], service)
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert workload["spec"]["replicas"] >= hpa["spec"]["minReplicas"], f"{service} starts below its HPA floor"
        pdb = named(objs, "PodDisruptionBudget", service)
        assert selects(pdb["spec"]["selector"], pod_labels(workload))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_pods_and_named_ports(overlay: str) -> None:
    objs = objects(overlay)
    for service in of_kind(objs, "Service"):
        selector = {"matchLabels": service["spec"]["selector"]}
        backing = [w for w in workloads(objs) if selects(selector, pod_labels(w))]
        assert backing, f"Service {service['metadata']['name']} selects no pods"
        for workload in backing:
            ports = {
                p.get("name") for c in workload["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])
            }
            for port in service["spec"]["ports"]:
                assert port["targetPort"] in ports, f"{service['metadata']['name']}: no container port {port}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scrape_annotations_point_at_a_declared_port(overlay: str) -> None:
    scraped = {}
    for workload in workloads(objects(overlay)):
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") == "true":
            ports = {p["containerPort"] for c in workload["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
            assert int(annotations["prometheus.io/port"]) in ports
            scraped[pod_labels(workload)["app.kubernetes.io/name"]] = int(annotations["prometheus.io/port"])
    # The contract's job names, each scraped where its metrics live.
    assert scraped == {"gateway": 8080, "feedback": 8090, "triton": 8002}


def relabel(configs: list[Obj], labels: dict[str, str]) -> dict[str, str] | None:
    """Prometheus relabelling (keep and replace, the actions used here); None when the target is dropped."""
    labels = dict(labels)
    for config in configs:
        value = ";".join(labels.get(name, "") for name in config.get("source_labels", []))
        match = re.fullmatch(config.get("regex", "(.*)"), value)
        action = config.get("action", "replace")
        if action == "keep":
            if not match:
                return None
        elif action == "replace":
            if match:
                replacement = re.sub(r"\$(\d+)", r"\\\1", config.get("replacement", "$1"))
                labels[config["target_label"]] = match.expand(replacement)
        else:
            raise AssertionError(f"unexpected relabel action {action}")
    return labels


def test_in_cluster_prometheus_scrapes_annotated_pods_under_their_app_name() -> None:
    config = yaml.safe_load((ROOT / "k8s" / "base" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    pod = {
        "__address__": "10.1.2.3:8000",
        "__metrics_path__": "/metrics",
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
        "__meta_kubernetes_pod_annotation_prometheus_io_port": "8002",
        "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": "triton",
        "__meta_kubernetes_pod_name": "triton-abc",
    }
    target = relabel(job["relabel_configs"], pod)
    assert target is not None
    assert (target["__address__"], target["job"], target["__metrics_path__"]) == ("10.1.2.3:8002", "triton", "/metrics")
    assert relabel(job["relabel_configs"], {**pod, "__meta_kubernetes_pod_annotation_prometheus_io_scrape": ""}) is None
    assert relabel(job["relabel_configs"], {**pod, "__meta_kubernetes_pod_phase": "Succeeded"}) is None
    # A port-less address (a pod without declared ports) gets the annotated port as well.
    assert relabel(job["relabel_configs"], {**pod, "__address__": "10.1.2.3"})["__address__"] == "10.1.2.3:8002"  # type: ignore[index]


def test_in_cluster_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    copy = tmp_path / "prometheus.yml"
    copy.write_text((ROOT / "k8s" / "base" / "prometheus.yml").read_text())
    result = run(tool("promtool"), "check", "config", "--syntax-only", str(copy))
    if "kubernetes_sd_configs not found" in result.stdout + result.stderr:
        pytest.skip("this promtool is built without Kubernetes service discovery (Debian's is)")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_is_written_and_the_database_url_is_referenced(overlay: str) -> None:
    objs = objects(overlay)
    assert not of_kind(objs, "Secret")
    writer = named(objs, "StatefulSet", "feedback")["spec"]["template"]["spec"]["containers"][0]
    url = next(e for e in writer["env"] if e["name"] == "RECSYS_DATABASE_URL")
    assert url["valueFrom"]["secretKeyRef"] == {"name": "recsys-db", "key": "url"}
    for config_map in of_kind(objs, "ConfigMap"):
        for key, value in config_map.get("data", {}).items():
            if key.endswith(".sql"):  # an init script names the roles' passwords; it takes them from the environment
                assert not re.search(r"(?i)\bpassword\s+(e?'|\$)", value), f"{key}: a password literal in a ConfigMap"
                assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", value), f"{key}: a URL with credentials"
                continue
            assert not re.search(r"(?i)password|secret_?key", f"{key}={value}"), f"{key} in a ConfigMap"


def test_experiment_config_map_is_the_gateways_experiment_and_serves_ensembles() -> None:
    """k8s/base/experiment.yaml is a copy of gateway/experiment.yaml (NGINX's split is rendered from the latter)."""
    ours = yaml.safe_load((ROOT / "k8s" / "base" / "experiment.yaml").read_text())
    gateway_file = ROOT / "gateway" / "experiment.yaml"
    if gateway_file.is_file():
        assert ours == yaml.safe_load(gateway_file.read_text()), "copy gateway/experiment.yaml to k8s/base/"
    assert sum(group["share"] for group in ours["groups"]) == 100
    for group in ours["groups"]:
        config = ROOT / "triton_models" / group["model"] / "config.pbtxt"
        assert 'platform: "ensemble"' in config.read_text(), f"{group['model']} is not an ensemble of the repository"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lives_in_the_project_namespace(overlay: str) -> None:
    cluster_scoped = {"Namespace", "StorageClass"}
    for obj in objects(overlay):
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{obj['kind']}/{obj['metadata']['name']}"


# --- network isolation --------------------------------------------------------------------------------------------


def _peer_matches(peer: Obj, labels: dict[str, str] | None) -> bool:
    """Does a from/to peer cover a pod of this namespace (labels) or, with None, an address outside the cluster?"""
    if "ipBlock" in peer:
        return labels is None or peer["ipBlock"]["cidr"] == "0.0.0.0/0"
    if "namespaceSelector" in peer:
        return False  # only kube-dns in kube-system is named this way
    return labels is not None and selects(peer["podSelector"], labels)


def _rules_allow(rules: list[Obj], labels: dict[str, str] | None, port: int, direction: str) -> bool:
    for rule in rules:
        ports = rule.get("ports")
        if ports and not any(p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in ports):
            continue
        peers = rule.get(direction)
        if not peers or any(_peer_matches(peer, labels) for peer in peers):
            return True
    return False


def reachable(objs: list[Obj], src: dict[str, str] | None, dst: dict[str, str] | None, port: int) -> bool:
    """Kubernetes NetworkPolicy semantics for one TCP connection; None stands for outside the namespace."""
    policies = of_kind(objs, "NetworkPolicy")
    if src is not None:
        egress = [
            p for p in policies if "Egress" in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], src)
        ]
        if egress and not any(_rules_allow(p["spec"].get("egress", []), dst, port, "to") for p in egress):
            return False
    if dst is not None:
        ingress = [
            p for p in policies if "Ingress" in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], dst)
        ]
        if ingress and not any(_rules_allow(p["spec"].get("ingress", []), src, port, "from") for p in ingress):
            return False
    return True


ALLOWED = {
    ("nginx", "gateway", 8080),
    ("prometheus", "gateway", 8080),
    ("gateway", "triton", 8000),
    ("gateway", "triton", 8001),
    ("prometheus", "triton", 8002),
    ("gateway", "feedback", 8090),
    ("prometheus", "feedback", 8090),
    ("feedback", "postgres", 5432),
}
PORTS = {"gateway": (8080,), "triton": (8000, 8001, 8002), "feedback": (8090,), "postgres": (5432,), "nginx": (8088,)}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_intended_pods_talk_to_each_other(overlay: str) -> None:
    objs = objects(overlay)
    apps = {pod_labels(w)["app.kubernetes.io/name"]: pod_labels(w) for w in workloads(objs)}
    wrong = [
        f"{src} -> {dst}:{port} is {'open' if (src, dst, port) not in ALLOWED else 'closed'}"
        for (src, src_labels), (dst, dst_labels) in itertools.product(apps.items(), apps.items())
        for port in PORTS.get(dst, ())
        if src != dst and reachable(objs, src_labels, dst_labels, port) != ((src, dst, port) in ALLOWED)
    ]
    assert not wrong, "\n".join(wrong)
    # Clients reach NGINX (and the public gRPC port of the gateway) from outside; nothing else is exposed.
    assert reachable(objs, None, apps["nginx"], 8088)
    assert reachable(objs, None, apps["gateway"], 50051)
    assert not reachable(objs, None, apps["gateway"], 8080)
    assert not reachable(objs, None, apps["triton"], 8001)
    assert not reachable(objs, None, apps["feedback"], 8090)


def test_on_eks_only_the_writer_reaches_the_managed_database() -> None:
    objs = objects("eks")
    apps = {pod_labels(w)["app.kubernetes.io/name"]: pod_labels(w) for w in workloads(objs)}
    assert "postgres" not in apps
    for app, labels in apps.items():
        assert reachable(objs, labels, None, 5432) == (app == "feedback"), app
    params = dict(
        line.split("=", 1) for line in (ROOT / "k8s/overlays/eks/params.env").read_text().splitlines() if "=" in line
    )
    policy = named(objs, "NetworkPolicy", "feedback-database")
    assert policy["spec"]["egress"][0]["to"][0]["ipBlock"]["cidr"] == params["DATABASE_CIDR"].strip()


# --- EKS specifics --------------------------------------------------------------------------------------------


def test_eks_triton_runs_on_the_gpu_node_group_with_its_iam_role() -> None:
    objs = objects("eks")
    triton = named(objs, "Deployment", "triton")
    pod = triton["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {NODE_POOL_LABEL: "gpu"}
    assert {"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["serviceAccountName"] == TRITON_SERVICE_ACCOUNT
    account = named(objs, "ServiceAccount", TRITON_SERVICE_ACCOUNT)
    role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(rf"arn:aws:iam::\d{{12}}:role/{TRITON_ROLE}", role)
    params = named(objs, "ConfigMap", "deploy-params")["data"]
    assert params["MODEL_REPOSITORY"].startswith("s3://")
    env = {e["name"]: e for e in container["env"]}
    assert env["RECSYS_MODEL_REPOSITORY"]["valueFrom"]["configMapKeyRef"] == {
        "name": "deploy-params",
        "key": "MODEL_REPOSITORY",
    }
    assert env["AWS_DEFAULT_REGION"]["valueFrom"]["configMapKeyRef"]["key"] == "AWS_REGION"
    # A dead python stub restarts the container (its health API stays live); tests/gateway/test_readiness.py runs it
    assert container["livenessProbe"]["exec"]["command"] == ["python3", "-m", "serving.liveness"]
    assert "RECSYS_TRITON_API_KEY" in env
    # Nothing else asks for a GPU or tolerates the GPU taint.
    for workload in workloads(objs):
        if workload["metadata"]["name"] != "triton":
            assert "tolerations" not in workload["spec"]["template"]["spec"], workload["metadata"]["name"]


def test_images_are_the_projects_own_per_overlay() -> None:
    for overlay, pattern in (
        ("local", r"(recsys-[a-z]+):local"),
        ("eks", r"\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com/(recsys-[a-z]+):[\w.-]+"),
    ):
        own = set()
        for workload in workloads(objects(overlay)):
            for container in workload["spec"]["template"]["spec"]["containers"]:
                match = re.fullmatch(pattern, container["image"])
                if match:
                    own.add(match.group(1))
                else:
                    assert not container["image"].startswith("recsys-"), f"{overlay}: {container['image']} not set"
        # The trainer image runs the EKS CronJob (a job, not a workload; tests/deploy/test_loop_eks.py checks it).
        assert own == set(IMAGES) - {"recsys-trainer"}, overlay
