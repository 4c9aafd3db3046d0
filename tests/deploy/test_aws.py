"""The AWS helpers against moto (AWS itself is out of reach here): ECR repositories, the model repository on S3
with its checksum manifest, IAM policies and the deploy role, the eksctl cluster config, and the command line."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

boto3 = pytest.importorskip("boto3", reason="boto3 is not installed (pip install boto3)")
moto = pytest.importorskip("moto", reason="moto is not installed (pip install 'moto[s3,ecr,iam,sts]')")

from deploy_support import ROOT, objects  # noqa: E402

from scripts.aws import AwsError, ecr, eks, iam, s3_models  # noqa: E402
from scripts.aws.__main__ import main  # noqa: E402
from scripts.aws.names import (  # noqa: E402
    DEPLOY_ROLE,
    GPU_TAINT_KEY,
    IMAGES,
    KUBERNETES_VERSION,
    NAMESPACE,
    NODE_POOL_LABEL,
    TRITON_ROLE,
    TRITON_SERVICE_ACCOUNT,
)
from trainer.ann import AnnPolicy  # noqa: E402

REGION = "eu-west-1"
ACCOUNT = "123456789012"  # moto's account
BUCKET = "recsys-models-test"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # moto wants credentials to exist; these are its documented dummies, not keys.
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_SESSION_TOKEN", "testing"),
        ("AWS_DEFAULT_REGION", REGION),
    ):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with moto.mock_aws():
        yield


def fake_repository(root: Path, version: int, *, weights: bytes = b"weights") -> Path:
    """A published repository as `recsys publish` lays it out: step models with version folders, ensembles with
    an empty folder 1."""
    for model in ("recsys_lookup", "recsys_scorer_onnx", "recsys_topk"):
        folder = root / model / str(version)
        folder.mkdir(parents=True)
        (root / model / "config.pbtxt").write_text(f'name: "{model}"\nbackend: "python"\n')
        (folder / "model.py").write_text("# step code\n")
    (root / "recsys_scorer_onnx" / str(version) / "model.onnx").write_bytes(weights)
    for ensemble in ("recsys_a", "recsys_b"):
        (root / ensemble / "1").mkdir(parents=True)
        (root / ensemble / "config.pbtxt").write_text(f'name: "{ensemble}"\nplatform: "ensemble"\n')
    return root


# --- ECR -------------------------------------------------------------------------------------------------------


def test_ecr_repositories_are_created_once_with_immutable_tags_and_scanning(aws: None) -> None:
    client = boto3.client("ecr", region_name=REGION)
    first = ecr.ensure_repositories(client, keep_images=20)
    assert set(first) == set(IMAGES)
    assert all(uri == f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{name}" for name, uri in first.items())
    assert ecr.ensure_repositories(client, keep_images=20) == first  # idempotent
    for repository in client.describe_repositories()["repositories"]:
        assert repository["imageTagMutability"] == "IMMUTABLE"
        assert repository["imageScanningConfiguration"]["scanOnPush"] is True
        policy = json.loads(
            client.get_lifecycle_policy(repositoryName=repository["repositoryName"])["lifecyclePolicyText"]
        )
        assert policy["rules"][1]["selection"]["countNumber"] == 20


def test_ecr_lifecycle_needs_at_least_one_image() -> None:
    with pytest.raises(AwsError, match="at least 1"):
        ecr.lifecycle_policy(0)


# --- S3 model repository ---------------------------------------------------------------------------------------


@pytest.fixture
def s3(aws: None) -> Any:
    client = boto3.client("s3", region_name=REGION)
    s3_models.ensure_bucket(client, BUCKET, REGION)
    return client


def test_bucket_is_private_encrypted_versioned_and_ensured_idempotently(s3: Any) -> None:
    s3_models.ensure_bucket(s3, BUCKET, REGION)
    assert s3.get_bucket_versioning(Bucket=BUCKET)["Status"] == "Enabled"
    block = s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"]
    assert all(block.values())
    rules = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


def test_upload_writes_the_triton_layout_then_the_manifest(s3: Any, tmp_path: Path) -> None:
    where = s3_models.Location(BUCKET)
    repository = fake_repository(tmp_path / "repo", 3)
    manifest = s3_models.upload_version(s3, where, repository, 3)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert "triton/recsys_scorer_onnx/3/model.onnx" in keys
    assert "triton/recsys_scorer_onnx/config.pbtxt" in keys
    assert {"triton/recsys_a/1/.keep", "triton/recsys_b/1/.keep"} <= keys
    assert "manifests/v3.json" in keys
    assert {e.key for e in manifest.entries} == {k.removeprefix("triton/") for k in keys if k.startswith("triton/")}
    stored = s3_models.Manifest.from_json(s3.get_object(Bucket=BUCKET, Key="manifests/v3.json")["Body"].read().decode())
    assert stored == manifest
    onnx = next(e for e in manifest.entries if e.key.endswith("model.onnx"))
    assert onnx.size == len(b"weights")
    assert s3_models.verify_version(s3, where, 3) == []
    assert s3_models.uploaded_versions(s3, where) == [3]
    assert s3_models.next_version(s3, where) == 4


def test_verify_reports_a_changed_and_a_missing_object(s3: Any, tmp_path: Path) -> None:
    where = s3_models.Location(BUCKET)
    s3_models.upload_version(s3, where, fake_repository(tmp_path / "repo", 1), 1)
    s3.put_object(Bucket=BUCKET, Key="triton/recsys_scorer_onnx/1/model.onnx", Body=b"tampered")
    s3.delete_object(Bucket=BUCKET, Key="triton/recsys_topk/1/model.py")
    problems = s3_models.verify_version(s3, where, 1)
    assert len(problems) == 2
    assert any("model.onnx" in p and "8 bytes" in p for p in problems)
    assert any(p == "recsys_topk/1/model.py: missing" for p in problems)
    assert "no manifest" in s3_models.verify_version(s3, where, 2)[0]


def test_versions_are_immutable_but_a_repeated_upload_is_a_no_op(s3: Any, tmp_path: Path) -> None:
    where = s3_models.Location(BUCKET)
    s3_models.upload_version(s3, where, fake_repository(tmp_path / "a", 2), 2)
    s3_models.upload_version(s3, where, fake_repository(tmp_path / "b", 2), 2)  # same bytes: fine
    with pytest.raises(AwsError, match="already exists with other content"):
        s3_models.upload_version(s3, where, fake_repository(tmp_path / "c", 2, weights=b"other"), 2)
    body = s3.get_object(Bucket=BUCKET, Key="triton/recsys_scorer_onnx/2/model.onnx")["Body"].read()
    assert body == b"weights"


def test_a_model_without_the_version_is_refused_before_any_upload(s3: Any, tmp_path: Path) -> None:
    repository = fake_repository(tmp_path / "repo", 5)
    (repository / "recsys_topk" / "5" / "model.py").rename(repository / "recsys_topk" / "model.py.bak")
    (repository / "recsys_topk" / "4").mkdir()
    (repository / "recsys_topk" / "4" / "model.py").write_text("# older\n")
    with pytest.raises(AwsError, match="recsys_topk has no version 5"):
        s3_models.upload_version(s3, s3_models.Location(BUCKET), repository, 5)
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)
    with pytest.raises(AwsError, match="no model folders"):
        s3_models.version_files(tmp_path / "repo" / "recsys_a", 1)


def test_publish_run_exports_numbers_after_the_bucket_and_renders_native_configs(
    s3: Any, tmp_path: Path, small_world: Any
) -> None:
    """The whole CD model step on a tiny run: train, publish (export + parity) as the next version, upload."""
    from trainer.pipeline import save_result, train_and_evaluate

    where = s3_models.Location(BUCKET)
    s3_models.upload_version(s3, where, fake_repository(tmp_path / "old", 1), 1)
    result = train_and_evaluate(small_world.interactions, "als", {"factors": 8, "iterations": 2}, show_progress=False)
    save_result(result, tmp_path / "run")
    manifest = s3_models.publish_run(s3, where, tmp_path / "run", tmp_path / "work")
    assert manifest.version == 2
    keys = {e.key for e in manifest.entries}
    assert {"recsys_scorer_torchscript/2/model.pt", "recsys_scorer_onnx/2/model.onnx", "recsys_a/1/.keep"} <= keys
    scorer = s3.get_object(Bucket=BUCKET, Key="triton/recsys_scorer_torchscript/config.pbtxt")["Body"].read().decode()
    assert 'backend: "pytorch"' in scorer  # the NGC image's native backend, not the local python flavour
    assert s3_models.verify_version(s3, where, 2) == []
    assert not any(key.startswith("recsys_scorer_ann/2/") for key in keys)  # 400 items, auto: no index

    # the approximate index as RECSYS_ANN_* ask (scripts.aws passes AnnPolicy.from_settings): flat, exhaustive
    asked = s3_models.publish_run(
        s3, where, tmp_path / "run", tmp_path / "work-ann", ann=AnnPolicy(kind="flat", min_recall=0.95)
    )
    assert {"recsys_scorer_ann/3/ann.faiss", "recsys_scorer_ann/3/ids.npz"} <= {e.key for e in asked.entries}
    assert s3_models.verify_version(s3, where, 3) == []


# --- IAM -------------------------------------------------------------------------------------------------------


def test_github_trust_is_limited_to_main_and_the_production_environment() -> None:
    statement = iam.github_trust_policy(ACCOUNT, "acme/recsys")["Statement"][0]
    assert statement["Principal"]["Federated"].endswith(":oidc-provider/token.actions.githubusercontent.com")
    assert statement["Condition"]["StringEquals"] == {"token.actions.githubusercontent.com:aud": "sts.amazonaws.com"}
    assert statement["Condition"]["StringLike"]["token.actions.githubusercontent.com:sub"] == [
        "repo:acme/recsys:ref:refs/heads/main",
        "repo:acme/recsys:environment:production",
    ]
    for bad in ("acme", "acme/recsys/extra", "*/recsys"):
        with pytest.raises(AwsError):
            iam.github_trust_policy(ACCOUNT, bad)
    with pytest.raises(AwsError, match="12 digits"):
        iam.github_trust_policy("1234", "acme/recsys")


def test_policies_grant_only_the_prefixes_repositories_and_cluster() -> None:
    read = iam.triton_read_policy(BUCKET)["Statement"]
    assert read[1]["Resource"] == f"arn:aws:s3:::{BUCKET}/triton/*"
    assert read[1]["Action"] == "s3:GetObject"
    deploy = iam.deploy_policy(account_id=ACCOUNT, region=REGION, bucket=BUCKET, cluster="recsys")["Statement"]
    by_sid = {s["Sid"]: s for s in deploy}
    assert by_sid["EcrPush"]["Resource"] == [f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{n}" for n in IMAGES]
    assert by_sid["ModelBucketReadWrite"]["Resource"] == [
        f"arn:aws:s3:::{BUCKET}/triton/*",
        f"arn:aws:s3:::{BUCKET}/manifests/*",
        f"arn:aws:s3:::{BUCKET}/runs/*",
    ]
    assert "s3:DeleteObject" not in json.dumps(deploy)
    assert by_sid["FindCluster"]["Resource"] == f"arn:aws:eks:{REGION}:{ACCOUNT}:cluster/recsys"


def test_deploy_role_and_oidc_provider_are_created_idempotently(aws: None) -> None:
    client = boto3.client("iam")
    provider = iam.ensure_github_oidc_provider(client, ACCOUNT)
    assert iam.ensure_github_oidc_provider(client, ACCOUNT) == provider
    assert len(client.list_open_id_connect_providers()["OpenIDConnectProviderList"]) == 1
    permissions = iam.deploy_policy(account_id=ACCOUNT, region=REGION, bucket=BUCKET, cluster="recsys")
    arn = iam.ensure_deploy_role(
        client, role_name=DEPLOY_ROLE, trust=iam.github_trust_policy(ACCOUNT, "acme/one"), permissions=permissions
    )
    again = iam.ensure_deploy_role(
        client, role_name=DEPLOY_ROLE, trust=iam.github_trust_policy(ACCOUNT, "acme/two"), permissions=permissions
    )
    assert arn == again == f"arn:aws:iam::{ACCOUNT}:role/{DEPLOY_ROLE}"
    trust = client.get_role(RoleName=DEPLOY_ROLE)["Role"]["AssumeRolePolicyDocument"]
    assert "repo:acme/two:ref:refs/heads/main" in json.dumps(trust)  # the trust follows the last call
    # botocore decodes the document into a dict, although the stubs call it a string.
    inline: Any = client.get_role_policy(RoleName=DEPLOY_ROLE, PolicyName=f"{DEPLOY_ROLE}-permissions")
    assert inline["PolicyDocument"]["Statement"] == permissions["Statement"]


# --- EKS (eksctl) ----------------------------------------------------------------------------------------------


def test_cluster_config_agrees_with_the_eks_overlay() -> None:
    config = eks.cluster_config(eks.ClusterSpec("recsys", REGION, ACCOUNT, BUCKET))
    assert config["metadata"]["version"] == KUBERNETES_VERSION
    (account,) = config["iam"]["serviceAccounts"]
    assert account["metadata"] == {"name": TRITON_SERVICE_ACCOUNT, "namespace": NAMESPACE}
    assert account["roleName"] == TRITON_ROLE
    assert account["attachPolicy"] == iam.triton_read_policy(BUCKET)
    groups = {g["name"]: g for g in config["managedNodeGroups"]}
    assert groups["gpu"]["labels"] == {NODE_POOL_LABEL: "gpu"}
    assert groups["gpu"]["taints"] == [{"key": GPU_TAINT_KEY, "value": "true", "effect": "NoSchedule"}]
    assert "taints" not in groups["cpu"]
    vpc_cni = next(a for a in config["addons"] if a["name"] == "vpc-cni")
    assert json.loads(vpc_cni["configurationValues"]) == {"enableNetworkPolicy": "true"}
    # The overlay's Triton lands exactly there, and there are GPU nodes for all of its replicas.
    triton = next(o for o in objects("eks") if o["kind"] == "Deployment" and o["metadata"]["name"] == "triton")
    pod = triton["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == groups["gpu"]["labels"]
    assert triton["spec"]["replicas"] <= groups["gpu"]["desiredCapacity"]
    storage = next(o for o in objects("eks") if o["kind"] == "StorageClass")
    assert storage["provisioner"] == "ebs.csi.aws.com"
    assert any(a["name"] == "aws-ebs-csi-driver" for a in config["addons"])
    entry = config["accessConfig"]["accessEntries"][0]
    assert entry["principalARN"] == f"arn:aws:iam::{ACCOUNT}:role/{DEPLOY_ROLE}"
    assert yaml.safe_load(eks.render(config)) == config


# --- the command line ------------------------------------------------------------------------------------------


def test_command_line_round_trip(aws: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--region", REGION, "ecr", "create"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(IMAGES)
    assert main(["--region", REGION, "s3", "ensure-bucket", "--bucket", BUCKET]) == 0
    repository = fake_repository(tmp_path / "repo", 7)
    assert main(["--region", REGION, "s3", "upload", str(repository), "--version", "7", "--bucket", BUCKET]) == 0
    assert main(["--region", REGION, "s3", "verify", "--version", "7", "--bucket", BUCKET]) == 0
    capsys.readouterr()
    assert main(["--region", REGION, "s3", "versions", "--bucket", BUCKET]) == 0
    assert capsys.readouterr().out.split() == ["7"]
    # A refused upload is one line on stderr and status 2.
    (repository / "recsys_scorer_onnx" / "7" / "model.onnx").write_bytes(b"changed")
    assert main(["--region", REGION, "s3", "upload", str(repository), "--version", "7", "--bucket", BUCKET]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert main(["--region", REGION, "eks", "config", "--bucket", BUCKET, "--gpu-instance-type", "g6.xlarge"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["metadata"]["region"] == REGION
    assert next(g for g in config["managedNodeGroups"] if g["name"] == "gpu")["instanceType"] == "g6.xlarge"
    assert config["accessConfig"]["accessEntries"][0]["principalARN"].startswith(f"arn:aws:iam::{ACCOUNT}:")
    assert main(["--region", REGION, "iam", "policies", "--bucket", BUCKET, "--github-repo", "acme/recsys"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"triton_read", "deploy_permissions", "deploy_trust"}
    assert main(["--region", REGION, "iam", "create-deploy-role", "--bucket", BUCKET, "--github-repo", "acme/r"]) == 0
    assert capsys.readouterr().out.strip() == f"arn:aws:iam::{ACCOUNT}:role/{DEPLOY_ROLE}"


def test_the_deploy_guide_names_real_commands_and_files() -> None:
    """Every `python -m scripts.aws ...` line of docs/deploy-eks.md parses, and every repository path it names
    exists."""
    from scripts.aws.__main__ import build_parser

    guide = (ROOT / "docs" / "deploy-eks.md").read_text()
    commands = [line.strip() for line in guide.splitlines() if line.strip().startswith("python -m scripts.aws")]
    assert len(commands) >= 5
    parser = build_parser()
    for command in commands:
        words = shlex.split(command, comments=True)[3:]
        parser.parse_args(words[: words.index(">")] if ">" in words else words)

    for path in set(re.findall(r"`((?:docker|k8s|scripts|\.github|grafana|docs|nginx)/[\w./-]+)`", guide)):
        assert (ROOT / path).exists(), path
