# syntax=docker/dockerfile:1
# Triton for the recommender. Two targets, one file:
#   production (the default: last stage): NVIDIA's NGC tritonserver 24.10, whose native pytorch and onnxruntime
#     backends run the scorers; the lookup and top-k steps stay python models, which import the serving/
#     package (copied in whole: numpy and asyncpg only) and need numpy < 2. The model repository is not baked in: it comes from
#     RECSYS_MODEL_REPOSITORY (s3://... on EKS, read with the pod's IAM role; a mounted folder elsewhere).
#   local: python:3.11 with the project and the tritonserver that nvidia-pytriton bundles (python backend only,
#     the "local" flavour of the repository), started by `recsys serve triton`. A synthetic ALS model is trained
#     and published into /models at build time, so the laptop stack answers without any setup; mount another
#     published repository over /models to serve something else.
# Build from the repository root:
#   docker build -f docker/triton.Dockerfile --target local -t recsys-triton:local .
#   docker build -f docker/triton.Dockerfile -t recsys-triton:prod .
# Base images and package indexes are build arguments whose defaults are the production ones (scripts/containers.sh
# passes a local stand-in base, this machine's pip CA certificate as the secret pip-cert, and torch's CPU wheel from
# local disk as the build context torch-wheels, where the defaults cannot be reached).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3

# Empty unless the build passes `--build-context torch-wheels=DIR` (a folder holding torch's CPU wheel).
FROM scratch AS torch-wheels

FROM ${PYTHON_IMAGE} AS local

ARG PIP_INDEX_URL=https://pypi.org/simple
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --uid 10001 --user-group --create-home --home-dir /home/recsys --shell /usr/sbin/nologin recsys \
    && mkdir -p /srv/recsys/.cache /models \
    && chown recsys:recsys /srv/recsys/.cache /models

# torch first, from PyTorch's CPU index (or the CPU wheel in torch-wheels, whose +cpu version outranks PyPI's):
# PyPI's wheel of the same version is the multi-GB CUDA build.
RUN --mount=type=bind,from=torch-wheels,target=/wheels --mount=type=secret,id=pip-cert \
    if [ -f /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi \
    && pip install --index-url "${TORCH_INDEX_URL}" --find-links /wheels torch==2.13.0

WORKDIR /srv/recsys
# The project's dependencies in a layer of their own (from pyproject.toml alone): a change to the code reinstalls
# none of them.
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip-cert \
    if [ -f /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi \
    && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\\n'.join(p['dependencies']))" >/tmp/requirements.txt \
    && pip install --index-url "${PIP_INDEX_URL}" --requirement /tmp/requirements.txt && rm /tmp/requirements.txt
COPY README.md ./
COPY recsys/ recsys/
COPY serving/ serving/
COPY trainer/ trainer/
COPY triton_models/ triton_models/
# Editable on purpose: publish copies each step's model.py from the checkout's triton_models/.
RUN --mount=type=secret,id=pip-cert \
    if [ -f /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi \
    && pip install --index-url "${PIP_INDEX_URL}" --no-deps -e .

USER 10001
ENV RECSYS_PROGRESS=false \
    RECSYS_MODEL_REPOSITORY=/models \
    RECSYS_TRITON_HOST=0.0.0.0 \
    RECSYS_TRITON_HTTP_PORT=8000 \
    RECSYS_TRITON_GRPC_PORT=8001 \
    RECSYS_TRITON_METRICS_PORT=8002
RUN recsys train --data synthetic --model als --refit --out /tmp/demo-als \
    && recsys publish /tmp/demo-als --repository /models \
    && rm -rf /tmp/demo-als

EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]
CMD ["recsys", "serve", "triton"]


FROM ${TRITON_IMAGE} AS production

ARG PIP_INDEX_URL=https://pypi.org/simple

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The image's Python (3.10) runs the python-backend steps: numpy < 2, or every output tensor comes back empty;
# asyncpg for the lookup's live fold-in (it follows new clicks in PostgreSQL at RECSYS_DATABASE_URL).
RUN --mount=type=secret,id=pip-cert \
    if [ -f /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi \
    && python3 -m pip install --index-url "${PIP_INDEX_URL}" numpy==1.26.4 asyncpg==0.30.0

# The only project code the served steps import: the serving/ package (what the python steps load imports numpy,
# asyncpg and the standard library only; tests/deploy/test_images.py keeps it so). Never trainer/ or recsys/.
COPY serving/ /opt/recsys/serving/

# 1000 is the image's own non-root user (triton-server).
USER 1000
# OpenBLAS worker threads only spin on the steps' tiny numpy work (the live fold-in's solves): one thread.
ENV PYTHONPATH=/opt/recsys \
    RECSYS_MODEL_REPOSITORY=/models \
    OPENBLAS_NUM_THREADS=1
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]
# Explicit model control: only the two A/B ensembles (and so their steps) are loaded; a version appears in a pod
# when the pod starts (CD rolls the Deployment after publishing). The NGC entrypoint stays in front of this.
# With RECSYS_TRITON_API_KEY (the Secret recsys-triton) every API but health answers only to its holders, as
# recsys.stack.triton.config.RESTRICTED_APIS does for the local server.
CMD ["sh", "-c", "R=metadata,inference,shared-memory,model-config,model-repository,statistics,trace,logging:recsys-triton-key=$RECSYS_TRITON_API_KEY; exec tritonserver --model-repository=\"$RECSYS_MODEL_REPOSITORY\" --model-control-mode=explicit --load-model=recsys_a --load-model=recsys_b --strict-readiness=true --exit-on-error=true --metrics-config=summary_latencies=true --http-port=8000 --grpc-port=8001 --metrics-port=8002 ${RECSYS_TRITON_API_KEY:+--http-restricted-api=$R --grpc-restricted-protocol=$R}"]
