"""AWS helpers for deploying the recommender (boto3): ECR repositories, the model repository on S3 with a checksum
manifest, the EKS cluster config (eksctl) and the IAM policies. ``python -m scripts.aws --help`` from the
repository root; docs/deploy-eks.md walks through them in order.

Every function takes its boto3 client as an argument (tests pass moto's); errors of botocore are translated
into :class:`AwsError` at this boundary, and the command line prints them as one line.
"""

from __future__ import annotations

from recsys.core.errors import RecsysError

__all__ = ["AwsError"]


class AwsError(RecsysError):
    """A deliberate failure of a helper (a refused upload, a bad argument, an AWS error), said in one line."""
