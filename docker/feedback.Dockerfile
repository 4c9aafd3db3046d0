# syntax=docker/dockerfile:1
# The feedback writer: /events intake from the gateway on 8090, batched into PostgreSQL, with a local spool
# (RECSYS_SPOOL_DIR) that holds accepted events while the database is away.
# Build from the repository root: docker build -f docker/feedback.Dockerfile -t recsys-feedback:local .
# The base image and PyPI's index are build arguments whose defaults are the production ones; scripts/containers.sh
# passes a mirror, a local stand-in base and this machine's pip CA certificate (the secret pip-cert) where needed.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE}

ARG PIP_INDEX_URL=https://pypi.org/simple

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin recsys \
    && mkdir -p /var/lib/recsys/spool \
    && chown recsys:recsys /var/lib/recsys/spool

WORKDIR /srv/recsys
COPY docker/requirements/feedback.txt /tmp/requirements.txt
RUN --mount=type=secret,id=pip-cert \
    if [ -f /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi \
    && pip install --index-url "${PIP_INDEX_URL}" --requirement /tmp/requirements.txt && rm /tmp/requirements.txt

# Only what `python -m feedback` imports: the kernel and the writer (its A/B report modules stay unimported).
COPY recsys/__init__.py recsys/
COPY recsys/core/ recsys/core/
# The kernel's limits come from the tensor contract (standard library only), as in the gateway's image.
COPY serving/__init__.py serving/contract.py serving/
COPY feedback/ feedback/

USER 10001
ENV PYTHONPATH=/srv/recsys \
    RECSYS_PROGRESS=false \
    RECSYS_FEEDBACK_HOST=0.0.0.0 \
    RECSYS_FEEDBACK_PORT=8090 \
    RECSYS_SPOOL_DIR=/var/lib/recsys/spool
VOLUME ["/var/lib/recsys/spool"]
EXPOSE 8090
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8090/healthz', timeout=2)"]
CMD ["python", "-m", "feedback"]
