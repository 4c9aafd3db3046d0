"""Names shared by the images, the Kubernetes manifests and the AWS resources (tests check all three agree)."""

from __future__ import annotations

#: ECR repositories, one per image in docker/.
IMAGES = ("recsys-triton", "recsys-gateway", "recsys-feedback", "recsys-nginx", "recsys-trainer")
NAMESPACE = "recsys"
#: Triton's ServiceAccount, whose IAM role (IRSA) reads the model repository.
TRITON_SERVICE_ACCOUNT = "triton"
TRITON_ROLE = "recsys-triton"
#: The role GitHub Actions assumes through OIDC to push images, upload models and deploy.
DEPLOY_ROLE = "recsys-github-deploy"
#: Node label and taint of the GPU node group (k8s/overlays/eks/triton-gpu.yaml selects and tolerates them).
NODE_POOL_LABEL = "recsys.io/node-pool"
GPU_TAINT_KEY = "nvidia.com/gpu"
#: Layout of the model bucket: the Triton repository under one prefix, checksum manifests under another (outside
#: the repository, so Triton never mistakes them for a model).
REPOSITORY_PREFIX = "triton"
MANIFEST_PREFIX = "manifests"
RUN_PREFIX = "runs"  # each version's training run (the loop warm-starts from it)
#: The Kubernetes version of the cluster; the manifests are validated against it.
KUBERNETES_VERSION = "1.33"
