#!/bin/sh
# The contract of the official NGINX images' entrypoint, as far as docker/nginx.Dockerfile uses it: run the
# /docker-entrypoint.d/ scripts in order, render every /etc/nginx/templates/*.template with envsubst (only the
# variables that are set, so NGINX's own $names stay) into NGINX_ENVSUBST_OUTPUT_DIR, then exec the command.
set -eu
if [ "${1:-}" = nginx ]; then
    for script in /docker-entrypoint.d/*.sh; do
        [ -e "$script" ] || continue
        echo "$0: running $script" >&2
        "$script"
    done
    output_dir="${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}"
    defined="$(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/${\1}/p' | tr '\n' ' ')"
    for template in /etc/nginx/templates/*.template; do
        [ -e "$template" ] || continue
        name="$(basename "$template" .template)"
        mkdir -p "$output_dir"
        envsubst "$defined" <"$template" >"$output_dir/$name"
        echo "$0: rendered $template to $output_dir/$name" >&2
    done
fi
exec "$@"
