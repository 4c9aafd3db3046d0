# syntax=docker/dockerfile:1
# NGINX, the A/B-splitting proxy in front of the gateway, as an unprivileged user (uid 101).
# nginx/nginx.conf.template is filled at start by the image's entrypoint (envsubst of the NGINX_* variables
# below, which the Kubernetes ConfigMap `nginx` or compose may override; NGINX's own $variables stay). Its
# split_clients block (ab_split.conf) is rendered at build time from gateway/experiment.yaml by the project's
# own renderer, so NGINX splits exactly as the gateway built from the same commit. Everything NGINX writes lives
# under the prefix /tmp/nginx, so the root filesystem can stay read-only.
# Build from the repository root: docker build -f docker/nginx.Dockerfile -t recsys-nginx:local .
# Base images and PyPI's index are build arguments whose defaults are the production ones (scripts/containers.sh
# passes local stand-ins built from Debian's packages, and this machine's pip CA certificate as the secret pip-cert).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG NGINX_IMAGE=nginxinc/nginx-unprivileged:1.27.3-alpine

FROM ${PYTHON_IMAGE} AS split
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=secret,id=pip-cert \
    if [ -f /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi \
    && pip install --index-url "${PIP_INDEX_URL}" pydantic==2.14.4 pyyaml==6.0.4
WORKDIR /src
COPY recsys/ recsys/
COPY serving/__init__.py serving/contract.py serving/
COPY gateway/ gateway/
COPY nginx/ nginx/
RUN python -c "from pathlib import Path; \
from gateway.experiment import load_experiment; \
from recsys.stack.nginx import render_split; \
Path('/tmp/ab_split.conf').write_text(render_split(load_experiment(Path('gateway/experiment.yaml'))))"


FROM ${NGINX_IMAGE}

COPY nginx/nginx.conf.template /etc/nginx/templates/nginx.conf.template
COPY --from=split /tmp/ab_split.conf /etc/nginx/templates/ab_split.conf.template
COPY --chmod=755 docker/nginx-prefix.sh /docker-entrypoint.d/15-recsys-prefix.sh

ENV NGINX_ENVSUBST_OUTPUT_DIR=/tmp/nginx/conf \
    NGINX_LISTEN=8088 \
    NGINX_UPSTREAMS="server gateway:8080 max_fails=1 fail_timeout=2s;" \
    NGINX_WORKERS=2 \
    NGINX_RATE=5000 \
    NGINX_BURST=2000 \
    NGINX_ACCESS_LOG=/dev/stdout

USER 101
EXPOSE 8088
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["sh", "-c", "wget -q -O /dev/null \"http://127.0.0.1:${NGINX_LISTEN##*:}/nginx-health\""]
CMD ["nginx", "-p", "/tmp/nginx/", "-c", "conf/nginx.conf", "-e", "/dev/stderr", "-g", "daemon off;"]
