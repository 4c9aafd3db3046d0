"""``python -m scripts.aws``: the AWS helpers as commands (run from the repository root).

Deliberate failures print one line and exit with status 2. Credentials come from the usual AWS chain (an SSO
profile on a laptop, the OIDC-assumed role in CD); nothing here reads or writes keys.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from scripts.aws import AwsError
from scripts.aws.names import DEPLOY_ROLE, IMAGES, MANIFEST_PREFIX, REPOSITORY_PREFIX

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from scripts.aws import s3_models
    from trainer.ann import AnnPolicy


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.aws",
        description="AWS helpers of the recommender: ECR, the model repository on S3, EKS, IAM.",
    )
    parser.add_argument("--region", help="AWS region (default: the AWS configuration's)")
    areas = parser.add_subparsers(dest="area", required=True)

    ecr = areas.add_parser("ecr", help="ECR repositories").add_subparsers(dest="command", required=True)
    create = ecr.add_parser("create", help=f"create the repositories {', '.join(IMAGES)} (idempotent)")
    create.add_argument("--keep-images", type=int, default=50, help="images each repository keeps")

    s3 = areas.add_parser("s3", help="the model repository on S3").add_subparsers(dest="command", required=True)
    bucket = s3.add_parser("ensure-bucket", help="create the model bucket (private, encrypted, versioned)")
    _location_args(bucket)
    upload = s3.add_parser("upload", help="upload version N of a local model repository with its manifest")
    upload.add_argument("repository", type=Path, help="a model repository written by `recsys publish`")
    upload.add_argument("--version", type=int, required=True)
    _location_args(upload)
    publish = s3.add_parser("publish", help="publish a trained run as the bucket's next version and upload it")
    publish.add_argument("run_dir", type=Path, help="a run written by `recsys train` (bpr or als)")
    _location_args(publish)
    verify = s3.add_parser("verify", help="read version N back and check it against its manifest")
    verify.add_argument("--version", type=int, required=True)
    _location_args(verify)
    remove = s3.add_parser("remove-version", help="roll version N back: delete its version folders, then its manifest")
    remove.add_argument("--version", type=int, required=True)
    _location_args(remove)
    versions = s3.add_parser("versions", help="list the uploaded versions")
    _location_args(versions)

    _loop_parsers(areas)

    eks = areas.add_parser("eks", help="the EKS cluster").add_subparsers(dest="command", required=True)
    config = eks.add_parser("config", help="print the eksctl ClusterConfig")
    config.add_argument("--cluster", default="recsys")
    config.add_argument("--account", help="AWS account id (default: the caller's)")
    config.add_argument("--bucket", required=True, help="the model bucket")
    config.add_argument("--gpu-instance-type", default="g5.xlarge")

    iam = areas.add_parser("iam", help="IAM policies and the deploy role").add_subparsers(dest="command", required=True)
    for name, text in (
        ("policies", "print the policy documents (Triton read, deploy permissions, GitHub trust)"),
        ("create-deploy-role", f"create the GitHub OIDC provider and the role {DEPLOY_ROLE} (idempotent)"),
    ):
        sub = iam.add_parser(name, help=text)
        sub.add_argument("--account", help="AWS account id (default: the caller's)")
        sub.add_argument("--bucket", required=True, help="the model bucket")
        sub.add_argument("--cluster", default="recsys")
        sub.add_argument("--github-repo", required=True, help="OWNER/NAME of the repository whose CD deploys")
    return parser


def _loop_parsers(areas: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from scripts.aws.loop import RUN_PREFIX

    loop = areas.add_parser("loop", help="the training loop against the S3 model repository (the EKS CronJob)")
    commands = loop.add_subparsers(dest="command", required=True)
    retrain = commands.add_parser(
        "retrain",
        help="mirror the served version, run the loop's cycles, upload a promoted version, load it on every replica",
    )
    retrain.add_argument(
        "--repository", required=True, help="s3://BUCKET/PREFIX: the Triton repository (MODEL_REPOSITORY of params.env)"
    )
    retrain.add_argument("--manifest-prefix", default=MANIFEST_PREFIX)
    retrain.add_argument("--run-prefix", default=RUN_PREFIX, help="where each version's training run lives")
    retrain.add_argument("--workdir", type=Path, required=True, help="an empty folder for the mirror and the runs")
    found = retrain.add_mutually_exclusive_group(required=True)
    found.add_argument("--replicas-service", help="a headless Service whose A records are the ready Triton pods")
    found.add_argument("--replica", action="append", help="host:port of one replica's HTTP endpoint (repeatable)")
    retrain.add_argument("--port", type=int, default=8000, help="Triton's HTTP port behind --replicas-service")
    retrain.add_argument("--items-only", action="store_true", help="only add new releases (no retrain)")
    retrain.add_argument("--window", type=float, help="minutes of newest log held out for the gate")
    retrain.add_argument("--tolerance", type=float, help="relative NDCG@10 a candidate may lose")
    attach = commands.add_parser("upload-run", help="attach the training run of an uploaded version (warm start)")
    attach.add_argument("run_dir", type=Path)
    attach.add_argument("--version", type=int, required=True)
    _location_args(attach)
    attach.add_argument("--run-prefix", default=RUN_PREFIX)
    seed = commands.add_parser("seed", help="publish a trained run as the next version, its run attached")
    seed.add_argument("run_dir", type=Path, help="a run written by `recsys train` (bpr or als)")
    _location_args(seed)
    seed.add_argument("--run-prefix", default=RUN_PREFIX)
    policy = commands.add_parser("policy", help="print the IAM policy of the trainer's role")
    _location_args(policy)
    policy.add_argument("--run-prefix", default=RUN_PREFIX)


def _location_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", default=REPOSITORY_PREFIX, help="the Triton repository's prefix in the bucket")
    parser.add_argument("--manifest-prefix", default=MANIFEST_PREFIX)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _run(args)
    except AwsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _run(args: argparse.Namespace) -> None:
    import boto3

    session = boto3.session.Session(region_name=args.region)
    region = session.region_name
    if region is None:
        raise AwsError("no AWS region: pass --region or configure one")

    if args.area == "ecr":
        from scripts.aws.ecr import ensure_repositories

        for name, uri in ensure_repositories(session.client("ecr"), keep_images=args.keep_images).items():
            print(f"{name}\t{uri}")
        return

    if args.area == "s3":
        from scripts.aws import s3_models

        s3 = session.client("s3")
        where = s3_models.Location(args.bucket, args.prefix, args.manifest_prefix)
        if args.command == "ensure-bucket":
            s3_models.ensure_bucket(s3, args.bucket, region)
            print(f"s3://{args.bucket} ready")
        elif args.command == "upload":
            manifest = s3_models.upload_version(s3, where, args.repository, args.version)
            print(f"version {manifest.version}: {len(manifest.entries)} objects under {where.url}")
        elif args.command == "publish":
            with tempfile.TemporaryDirectory(prefix="recsys-publish-") as tmp:
                manifest = s3_models.publish_run(s3, where, args.run_dir, Path(tmp), ann=_ann_policy())
            print(f"published version {manifest.version}: {len(manifest.entries)} objects under {where.url}")
        elif args.command == "remove-version":
            for key in s3_models.remove_version(s3, where, args.version):
                print(f"deleted {where.key(key)}")
        elif args.command == "verify":
            problems = s3_models.verify_version(s3, where, args.version)
            if problems:
                raise AwsError(f"version {args.version} does not match its manifest: " + "; ".join(problems))
            print(f"version {args.version} matches its manifest")
        else:
            print("\n".join(str(v) for v in s3_models.uploaded_versions(s3, where)))
        return

    if args.area == "loop":
        _run_loop(args, session.client("s3"))
        return

    account = args.account or session.client("sts").get_caller_identity()["Account"]
    if args.area == "eks":
        from scripts.aws.eks import ClusterSpec, cluster_config, render

        spec = ClusterSpec(args.cluster, region, account, args.bucket)
        spec = dataclasses.replace(spec, gpu=dataclasses.replace(spec.gpu, instance_type=args.gpu_instance_type))
        print(render(cluster_config(spec)), end="")
        return

    from scripts.aws import iam

    permissions = iam.deploy_policy(account_id=account, region=region, bucket=args.bucket, cluster=args.cluster)
    trust = iam.github_trust_policy(account, args.github_repo)
    if args.command == "policies":
        documents = {
            "triton_read": iam.triton_read_policy(args.bucket),
            "deploy_permissions": permissions,
            "deploy_trust": trust,
        }
        print(json.dumps(documents, indent=2))
        return
    client = session.client("iam")
    iam.ensure_github_oidc_provider(client, account)
    print(iam.ensure_deploy_role(client, role_name=DEPLOY_ROLE, trust=trust, permissions=permissions))


def _ann_policy() -> AnnPolicy:
    """``RECSYS_ANN_*``, as ``recsys publish`` reads them (imported here: the other helpers need no trainer)."""
    from recsys.core.settings import get_settings
    from trainer.ann import AnnPolicy

    return AnnPolicy.from_settings(get_settings())


def _run_loop(args: argparse.Namespace, s3: S3Client) -> None:
    from scripts.aws import loop, s3_models

    if args.command == "retrain":
        _retrain(args, s3, _repository_location(args.repository, args.manifest_prefix))
        return
    where = s3_models.Location(args.bucket, args.prefix, args.manifest_prefix)
    if args.command == "policy":
        prefixes = (where.prefix.strip("/"), where.manifest_prefix.strip("/"), args.run_prefix.strip("/"))
        print(json.dumps(loop.trainer_policy(args.bucket, prefixes), indent=2))
    elif args.command == "upload-run":
        if s3_models.read_manifest(s3, where, args.version) is None:
            raise AwsError(f"{where.url}: version {args.version} is not uploaded")
        count = loop.upload_run(s3, args.bucket, args.version, args.run_dir, run_prefix=args.run_prefix)
        print(f"the run of version {args.version}: {count} files under s3://{args.bucket}/{args.run_prefix}")
    elif args.command == "seed":
        version = s3_models.next_version(s3, where)
        loop.upload_run(s3, args.bucket, version, args.run_dir, run_prefix=args.run_prefix, orphan=True)
        with tempfile.TemporaryDirectory(prefix="recsys-publish-") as tmp:
            manifest = s3_models.publish_run(s3, where, args.run_dir, Path(tmp), ann=_ann_policy())
        if manifest.version != version:
            raise AwsError(f"published version {manifest.version}, but its run went to version {version}")
        print(f"published version {version} with its run: {len(manifest.entries)} objects under {where.url}")
    else:
        raise AwsError(f"unknown loop command {args.command}")


def _repository_location(url: str, manifest_prefix: str) -> s3_models.Location:
    from scripts.aws.s3_models import Location

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not url.startswith("s3://") or not bucket or not prefix.strip("/"):
        raise AwsError(f"{url!r} is not s3://BUCKET/PREFIX")
    return Location(bucket, prefix.strip("/"), manifest_prefix)


def _retrain(args: argparse.Namespace, s3: S3Client, where: s3_models.Location) -> None:
    import logging
    from datetime import timedelta

    from recsys.core.settings import get_settings
    from recsys.loop.retrain import RetrainOptions
    from scripts.aws import loop
    from trainer.new_items import CatalogueRules

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    addresses = args.replica or loop.resolve_replicas(args.replicas_service, args.port)
    options = RetrainOptions(
        window=timedelta(minutes=settings.retrain_window_minutes if args.window is None else args.window),
        tolerance=settings.retrain_tolerance if args.tolerance is None else args.tolerance,
        min_users=settings.retrain_min_users,
        ann=_ann_policy(),
    )
    result = loop.run_once(
        s3, where, settings.database_url.get_secret_value(), {a: loop.HttpReplica(a) for a in addresses},
        args.workdir, kinds=("items",) if args.items_only else ("items", "retrain"), options=options,
        rules=CatalogueRules(settings.catalogue_min_listeners, settings.catalogue_max_plays),
        run_prefix=args.run_prefix,
    )  # fmt: skip
    for address, what in result.reconciled.items():
        print(f"replica {address}: {what}")
    for cycle in result.cycles:
        version = f" -> version {cycle.published_version}" if cycle.published_version else ""
        print(f"{cycle.kind} {cycle.decision}{version} in {cycle.seconds:.1f} s: {cycle.reason}")
    if not result.ok:
        problems = [f"replica {a} {e}" for a, e in result.lagging.items()]
        problems += [f"version {v} loaded on no replica and was removed from S3" for v in result.removed]
        problems += [f"the {c.kind} cycle failed" for c in result.cycles if c.decision == "failed"]
        raise AwsError("; ".join(problems))


if __name__ == "__main__":
    sys.exit(main())
