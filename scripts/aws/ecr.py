"""ECR repositories for the four images: immutable tags (CD pushes one tag per commit), scan on push, and a
lifecycle policy that bounds how many images each keeps."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from scripts.aws import AwsError
from scripts.aws.names import IMAGES

if TYPE_CHECKING:
    from mypy_boto3_ecr import ECRClient


def lifecycle_policy(keep_images: int) -> dict[str, Any]:
    """Untagged layers go after a day; of the tagged images, the newest ``keep_images`` stay."""
    if keep_images < 1:
        raise AwsError(f"keep_images must be at least 1, got {keep_images}")
    return {
        "rules": [
            {
                "rulePriority": 1,
                "description": "drop untagged images after a day",
                "selection": {
                    "tagStatus": "untagged",
                    "countType": "sinceImagePushed",
                    "countUnit": "days",
                    "countNumber": 1,
                },
                "action": {"type": "expire"},
            },
            {
                "rulePriority": 2,
                "description": f"keep the newest {keep_images} images",
                "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": keep_images},
                "action": {"type": "expire"},
            },
        ]
    }


def ensure_repositories(ecr: ECRClient, names: Iterable[str] = IMAGES, *, keep_images: int = 50) -> dict[str, str]:
    """Creates each missing repository, (re)sets its lifecycle policy, and returns name -> repository URI.

    Idempotent: an existing repository is kept as it is apart from the lifecycle policy.
    """
    policy = json.dumps(lifecycle_policy(keep_images))
    uris: dict[str, str] = {}
    try:
        for name in names:
            try:
                repository = ecr.create_repository(
                    repositoryName=name,
                    imageTagMutability="IMMUTABLE",
                    imageScanningConfiguration={"scanOnPush": True},
                    encryptionConfiguration={"encryptionType": "AES256"},
                )["repository"]
            except ecr.exceptions.RepositoryAlreadyExistsException:
                repository = ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
            ecr.put_lifecycle_policy(repositoryName=name, lifecyclePolicyText=policy)
            uris[name] = repository["repositoryUri"]
    except ClientError as exc:
        raise AwsError(f"ECR: {exc}") from exc
    return uris
