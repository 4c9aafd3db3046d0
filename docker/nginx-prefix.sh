#!/bin/sh
# Runs before the image's 20-envsubst-on-templates.sh: the prefix folders the template's relative paths name
# (conf/ for the rendered files, logs/, tmp/), with the error log sent to the container's stderr.
set -eu
mkdir -p /tmp/nginx/conf /tmp/nginx/logs /tmp/nginx/tmp
ln -sf /dev/stderr /tmp/nginx/logs/error.log
