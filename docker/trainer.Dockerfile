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
# scripts/containers.sh builds it here with a local stand-in base, this machine's pip CA certificate (the secret
# pip-cert) and torch's CPU wheel from local disk (the build context torch-wheels), since neither Docker Hub nor
# PyTorch's index is reachable from this machine.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# Empty unless the build passes `--build-context torch-wheels=DIR` (a folder holding torch's CPU wheel).
FROM scratch AS torch-wheels

FROM ${PYTHON_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX_URL=https://pypi.org/simple

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_INDEX_URL=${PIP_INDEX_URL}

# torch first, from the CPU index (or the CPU wheel in torch-wheels, whose +cpu version outranks PyPI's):
# the dependencies' install below then finds torch==2.13.0 satisfied and pulls no CUDA build.
RUN --mount=type=bind,from=torch-wheels,target=/wheels --mount=type=secret,id=pip-cert \
    if [ -f /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi \
    && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin recsys \
    && pip install --index-url "${TORCH_INDEX_URL}" --find-links /wheels torch==2.13.0

WORKDIR /srv/recsys
# The project's dependencies (and the [aws] extra: boto3, for the S3 model repository) in a layer of their own,
# from pyproject.toml alone: a change to the code reinstalls none of them.
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip-cert \
    if [ -f /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi \
    && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\\n'.join(p['dependencies'] + p['optional-dependencies']['aws']))" >/tmp/requirements.txt \
    && pip install --index-url "${PIP_INDEX_URL}" --requirement /tmp/requirements.txt && rm /tmp/requirements.txt
COPY README.md ./
COPY recsys/ recsys/
COPY serving/ serving/
COPY trainer/ trainer/
COPY triton_models/ triton_models/
COPY scripts/__init__.py scripts/
COPY scripts/aws/ scripts/aws/
# Editable on purpose: publish copies each step's model.py from the checkout's triton_models/.
RUN --mount=type=secret,id=pip-cert \
    if [ -f /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi \
    && pip install --no-deps -e ".[aws]"

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
