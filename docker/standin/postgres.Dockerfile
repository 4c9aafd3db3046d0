# syntax=docker/dockerfile:1
# A local stand-in for the official postgres:15 image, for machines that cannot pull it: Debian's PostgreSQL 15
# on the stand-in Debian base, run as uid 999 with the same environment contract (POSTGRES_USER, POSTGRES_PASSWORD,
# POSTGRES_DB, POSTGRES_INITDB_ARGS, PGDATA: the cluster is created on first start, then the files of
# /docker-entrypoint-initdb.d run against it, see postgres-entrypoint.sh). docker/compose.yaml and the local overlay's
# StatefulSet use it through RECSYS_POSTGRES_IMAGE; production keeps a managed instance. Built by
# scripts/containers.sh.
ARG BASE_IMAGE=debian:12.8-slim
FROM ${BASE_IMAGE}

# The postgres user first, with the official image's uid, so the package adopts it; no packaged "main" cluster.
# The socket folder writable by all, as in the official image: podman gives a tmpfs or emptyDir mounted over it the
# folder's mode, not its owner.
RUN groupadd --gid 999 postgres \
    && mkdir -p /etc/postgresql-common/createcluster.d \
    && echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/recsys.conf \
    && useradd --uid 999 --gid 999 --home-dir /var/lib/postgresql --shell /bin/sh postgres \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15=15.* \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql /docker-entrypoint-initdb.d \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && chmod 700 /var/lib/postgresql/data \
    && chmod 3777 /var/run/postgresql
COPY --chmod=755 docker/standin/postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh

ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    LANG=C.UTF-8 \
    PGDATA=/var/lib/postgresql/data
USER 999
EXPOSE 5432
STOPSIGNAL SIGINT
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=10 \
    CMD ["sh", "-c", "pg_isready -h 127.0.0.1 -U \"${POSTGRES_USER:-postgres}\" -d \"${POSTGRES_DB:-postgres}\""]
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres", "-c", "listen_addresses=*"]
