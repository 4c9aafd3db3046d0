# syntax=docker/dockerfile:1
# The gateway: REST on 8080 (/recommend, /feedback, /healthz, /readyz, /metrics) and gRPC on 50051.
# Build from the repository root: docker build -f docker/gateway.Dockerfile -t recsys-gateway:local .
# The base image and PyPI's index are build arguments whose defaults are the production ones; scripts/containers.sh
# passes a mirror, a local stand-in base and this machine's pip CA certificate (the secret pip-cert) where needed.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE}

ARG PIP_INDEX_URL=https://pypi.org/simple

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin recsys

WORKDIR /srv/recsys
COPY docker/requirements/gateway.txt /tmp/requirements.txt
RUN --mount=type=secret,id=pip-cert \
    if [ -f /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi \
    && pip install --index-url "${PIP_INDEX_URL}" --requirement /tmp/requirements.txt && rm /tmp/requirements.txt

# Only what `python -m gateway` imports: the kernel, the generated API, the tensor contract and the gateway.
COPY recsys/__init__.py recsys/
COPY recsys/core/ recsys/core/
COPY recsys/v1/ recsys/v1/
COPY serving/__init__.py serving/contract.py serving/
COPY gateway/ gateway/

USER 10001
ENV PYTHONPATH=/srv/recsys \
    RECSYS_PROGRESS=false \
    RECSYS_GATEWAY_HOST=0.0.0.0 \
    RECSYS_GATEWAY_PORT=8080 \
    RECSYS_GATEWAY_GRPC_PORT=50051
EXPOSE 8080 50051
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
CMD ["python", "-m", "gateway"]
