"""IAM for the deployment, as policy documents (printed for review) and one idempotent role creation.

* Triton's role (IRSA, created by eksctl from scripts/aws/eks.py): read the model repository, nothing else.
* The deploy role that GitHub Actions assumes through OIDC (no long-lived keys): trusted only for this
  repository's main branch and its ``production`` environment; pushes the four images, writes model versions
  and manifests, and describes the cluster (Kubernetes permissions come from an EKS access entry).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from scripts.aws import AwsError
from scripts.aws.names import IMAGES, MANIFEST_PREFIX, REPOSITORY_PREFIX, RUN_PREFIX

if TYPE_CHECKING:
    from mypy_boto3_iam import IAMClient

GITHUB_OIDC_HOST = "token.actions.githubusercontent.com"
STS_AUDIENCE = "sts.amazonaws.com"
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*/[A-Za-z0-9._-]+")
_ACCOUNT = re.compile(r"\d{12}")

Policy = dict[str, Any]


def _document(*statements: dict[str, Any]) -> Policy:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def _check_account(account_id: str) -> None:
    if not _ACCOUNT.fullmatch(account_id):
        raise AwsError(f"AWS account id {account_id!r} is not 12 digits")


def github_oidc_provider_arn(account_id: str) -> str:
    _check_account(account_id)
    return f"arn:aws:iam::{account_id}:oidc-provider/{GITHUB_OIDC_HOST}"


def github_trust_policy(account_id: str, repo: str, *, branch: str = "main", environment: str = "production") -> Policy:
    """Who may assume the deploy role: workflow runs of ``repo`` on ``branch``, or its jobs that run in
    ``environment`` (GitHub puts the environment, not the branch, into the token's subject for those)."""
    if not _REPO.fullmatch(repo):
        raise AwsError(f"GitHub repository {repo!r} is not OWNER/NAME")
    subjects = [f"repo:{repo}:ref:refs/heads/{branch}", f"repo:{repo}:environment:{environment}"]
    return _document(
        {
            "Effect": "Allow",
            "Principal": {"Federated": github_oidc_provider_arn(account_id)},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {
                "StringEquals": {f"{GITHUB_OIDC_HOST}:aud": STS_AUDIENCE},
                "StringLike": {f"{GITHUB_OIDC_HOST}:sub": subjects},
            },
        }
    )


def triton_read_policy(bucket: str, prefix: str = REPOSITORY_PREFIX) -> Policy:
    """Read-only access to the model repository prefix (listing is limited to it as well)."""
    prefix = prefix.strip("/")
    return _document(
        {
            "Sid": "ListRepository",
            "Effect": "Allow",
            "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
            "Resource": f"arn:aws:s3:::{bucket}",
            "Condition": {"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}},
        },
        {
            "Sid": "ReadRepository",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": f"arn:aws:s3:::{bucket}/{prefix}/*",
        },
    )


def deploy_policy(
    *,
    account_id: str,
    region: str,
    bucket: str,
    cluster: str,
    prefix: str = REPOSITORY_PREFIX,
    manifest_prefix: str = MANIFEST_PREFIX,
    run_prefix: str = RUN_PREFIX,
    repositories: Iterable[str] = IMAGES,
) -> Policy:
    """What CD does with AWS: push images to the ECR repositories, read and write model versions, their manifests
    and their training runs (the loop warm-starts from them), and find the cluster's endpoint."""
    _check_account(account_id)
    prefixes = [p.strip("/") for p in (prefix, manifest_prefix, run_prefix)]
    return _document(
        {"Sid": "EcrLogin", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
        {
            "Sid": "EcrPush",
            "Effect": "Allow",
            "Action": [
                "ecr:BatchCheckLayerAvailability",
                "ecr:BatchGetImage",
                "ecr:CompleteLayerUpload",
                "ecr:DescribeImages",
                "ecr:GetDownloadUrlForLayer",
                "ecr:InitiateLayerUpload",
                "ecr:PutImage",
                "ecr:UploadLayerPart",
            ],
            "Resource": [f"arn:aws:ecr:{region}:{account_id}:repository/{name}" for name in repositories],
        },
        {
            "Sid": "ModelBucketList",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": f"arn:aws:s3:::{bucket}",
            "Condition": {"StringLike": {"s3:prefix": [f"{p}/*" for p in prefixes]}},
        },
        {
            "Sid": "ModelBucketReadWrite",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject"],
            "Resource": [f"arn:aws:s3:::{bucket}/{p}/*" for p in prefixes],
        },
        {
            "Sid": "FindCluster",
            "Effect": "Allow",
            "Action": "eks:DescribeCluster",
            "Resource": f"arn:aws:eks:{region}:{account_id}:cluster/{cluster}",
        },
    )


def ensure_github_oidc_provider(iam: IAMClient, account_id: str) -> str:
    """The account's OIDC provider for GitHub Actions (one per account), created if missing; returns its ARN."""
    arn = github_oidc_provider_arn(account_id)
    try:
        iam.get_open_id_connect_provider(OpenIDConnectProviderArn=arn)
    except iam.exceptions.NoSuchEntityException:
        iam.create_open_id_connect_provider(Url=f"https://{GITHUB_OIDC_HOST}", ClientIDList=[STS_AUDIENCE])
    except ClientError as exc:
        raise AwsError(f"IAM: {exc}") from exc
    return arn


def ensure_deploy_role(iam: IAMClient, *, role_name: str, trust: Policy, permissions: Policy) -> str:
    """Creates the role (or brings an existing one's trust policy up to date) and sets its inline permissions;
    returns the role's ARN. Idempotent."""
    try:
        try:
            arn = iam.create_role(
                RoleName=role_name,
                AssumeRolePolicyDocument=json.dumps(trust),
                Description="GitHub Actions CD of the recommender (OIDC, no long-lived keys)",
                MaxSessionDuration=3600,
            )["Role"]["Arn"]
        except iam.exceptions.EntityAlreadyExistsException:
            iam.update_assume_role_policy(RoleName=role_name, PolicyDocument=json.dumps(trust))
            arn = iam.get_role(RoleName=role_name)["Role"]["Arn"]
        iam.put_role_policy(
            RoleName=role_name, PolicyName=f"{role_name}-permissions", PolicyDocument=json.dumps(permissions)
        )
    except ClientError as exc:
        raise AwsError(f"IAM role {role_name}: {exc}") from exc
    return arn
