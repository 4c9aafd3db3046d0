# syntax=docker/dockerfile:1
# A local stand-in for nginxinc/nginx-unprivileged, for machines that cannot pull it: Debian's NGINX on the
# stand-in Debian base, run as uid 101 with the same entrypoint contract (the /docker-entrypoint.d/ scripts, then
# envsubst of /etc/nginx/templates/*.template into NGINX_ENVSUBST_OUTPUT_DIR). docker/nginx.Dockerfile builds on
# it through its NGINX_IMAGE argument; production keeps the upstream image. Built by scripts/containers.sh.
ARG BASE_IMAGE=debian:12.8-slim
FROM ${BASE_IMAGE}

RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx-light=1.22.* gettext-base=0.21-* wget=1.21.* \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 101 nginx \
    && useradd --uid 101 --gid 101 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nginx \
    && mkdir -p /docker-entrypoint.d /etc/nginx/templates
COPY --chmod=755 docker/standin/nginx-entrypoint.sh /docker-entrypoint.sh

USER 101
EXPOSE 8080
STOPSIGNAL SIGQUIT
HEALTHCHECK NONE
ENTRYPOINT ["/docker-entrypoint.sh"]
CMD ["nginx", "-g", "daemon off;"]
