# syntax=docker/dockerfile:1
# The trainer: the training loop's image (`recsys retrain`, `recsys train`, `recsys publish`), and on EKS the
# CronJob `trainer` (k8s/overlays/eks/trainer.yaml), which runs `python -m scripts.aws loop retrain`: mirror the
# served version from the S3 model repository, run one loop cycle against PostgreSQL, upload a promoted version
# and load it into every Triton replica.
#
# The base image and the package indexes are build arguments whose defaults are the production ones (python
# 3.11 slim; torch's CPU wheel from PyTorch's own index, since PyPI's wheel of the same version is the multi-GB
# CUDA build). Override them for a mirror or an air-gapped registry, never for a different toolchain:
#   docker build -f docker/trainer.Dockerfile -t recsys-trainer:local .
#   docker build -f docker/trainer.Dockerfile --build-arg PYTHON_IMAGE=mirror.example/python:3.11.11-slim-bookworm \
#     --build-arg TORCH_INDEX_URL=https://mirror.example/whl/cpu --build-arg PIP_INDEX_URL=https://mirror.example/pypi .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX_URL=https://pypi.org/simple

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_INDEX_URL=${PIP_INDEX_URL}

# torch first, from the CPU index: `pip install -e .` then finds torch==2.13.0 satisfied and pulls no CUDA build.
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin recsys \
    && pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0

WORKDIR /srv/recsys
COPY pyproject.toml README.md ./
COPY recsys/ recsys/
COPY serving/ serving/
COPY trainer/ trainer/
COPY triton_models/ triton_models/
COPY scripts/__init__.py scripts/
COPY scripts/aws/ scripts/aws/
# Editable on purpose: publish copies each step's model.py from the checkout's triton_models/. The [aws] extra
# is boto3, for the S3 model repository.
RUN pip install -e ".[aws]"

USER 10001
# The root filesystem is read-only in the cluster: every cache goes to /tmp (an emptyDir there), the loop's runs
# and its mirror of the model repository to /work (another one).
ENV RECSYS_PROGRESS=false \
    RECSYS_LOOP_DIR=/work/runs \
    HOME=/tmp \
    NUMBA_CACHE_DIR=/tmp/numba \
    MPLCONFIGDIR=/tmp/matplotlib
# A batch job, not a server: nothing to probe; Kubernetes judges each run by its exit status.
HEALTHCHECK NONE
ENTRYPOINT ["recsys"]
CMD ["--help"]
