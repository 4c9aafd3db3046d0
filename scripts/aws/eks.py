"""The EKS cluster as an eksctl ClusterConfig: a CPU node group for NGINX, the gateway, the writer and Prometheus;
a tainted GPU node group for Triton; IRSA for Triton's model repository; the VPC CNI's network policy agent (so
the manifests' NetworkPolicies are enforced); EBS volumes for the writer's spool; an access entry for the deploy
role. ``python -m scripts.aws eks config ... > cluster.yaml && eksctl create cluster -f cluster.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from scripts.aws.iam import triton_read_policy
from scripts.aws.names import (
    DEPLOY_ROLE,
    GPU_TAINT_KEY,
    KUBERNETES_VERSION,
    NAMESPACE,
    NODE_POOL_LABEL,
    REPOSITORY_PREFIX,
    TRITON_ROLE,
    TRITON_SERVICE_ACCOUNT,
)

CLUSTER_ADMIN_POLICY = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"


@dataclass(frozen=True)
class NodeGroup:
    instance_type: str
    min_size: int
    max_size: int
    desired: int


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    region: str
    account_id: str
    bucket: str
    prefix: str = REPOSITORY_PREFIX
    version: str = KUBERNETES_VERSION
    cpu: NodeGroup = NodeGroup("m6i.large", 2, 6, 3)
    # One A10G per node; two Triton replicas by default (k8s/overlays/eks/triton-gpu.yaml).
    gpu: NodeGroup = NodeGroup("g5.xlarge", 1, 6, 2)


def cluster_config(spec: ClusterSpec) -> dict[str, Any]:
    return {
        "apiVersion": "eksctl.io/v1alpha5",
        "kind": "ClusterConfig",
        "metadata": {"name": spec.name, "region": spec.region, "version": spec.version},
        "iam": {
            "withOIDC": True,
            "serviceAccounts": [
                {
                    "metadata": {"name": TRITON_SERVICE_ACCOUNT, "namespace": NAMESPACE},
                    "roleName": TRITON_ROLE,
                    # The ServiceAccount itself is in k8s/base; eksctl makes only the role and its trust.
                    "roleOnly": True,
                    "attachPolicy": triton_read_policy(spec.bucket, spec.prefix),
                }
            ],
        },
        "accessConfig": {
            "authenticationMode": "API_AND_CONFIG_MAP",
            "accessEntries": [
                {
                    # Cluster-wide: the eks overlay holds a Namespace, a StorageClass and RBAC objects.
                    "principalARN": f"arn:aws:iam::{spec.account_id}:role/{DEPLOY_ROLE}",
                    "accessPolicies": [{"policyARN": CLUSTER_ADMIN_POLICY, "accessScope": {"type": "cluster"}}],
                }
            ],
        },
        "addons": [
            {"name": "vpc-cni", "configurationValues": '{"enableNetworkPolicy": "true"}'},
            {"name": "coredns"},
            {"name": "kube-proxy"},
            {"name": "aws-ebs-csi-driver", "wellKnownPolicies": {"ebsCSIController": True}},
            {"name": "metrics-server"},
        ],
        "managedNodeGroups": [
            _node_group("cpu", spec.cpu),
            {
                **_node_group("gpu", spec.gpu),
                # eksctl picks the NVIDIA AMI and installs the device plugin for GPU instance types.
                "taints": [{"key": GPU_TAINT_KEY, "value": "true", "effect": "NoSchedule"}],
            },
        ],
    }


def _node_group(pool: str, group: NodeGroup) -> dict[str, Any]:
    return {
        "name": pool,
        "instanceType": group.instance_type,
        "amiFamily": "AmazonLinux2023",
        "minSize": group.min_size,
        "maxSize": group.max_size,
        "desiredCapacity": group.desired,
        "privateNetworking": True,
        "volumeSize": 100,
        "labels": {NODE_POOL_LABEL: pool},
    }


def render(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False)
