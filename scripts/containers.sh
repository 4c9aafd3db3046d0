#!/usr/bin/env bash
# Builds the project's images from docker/ with podman, and runs them: the compose stack (docker/compose.yaml) and
# the local overlay's workloads (k8s/overlays/local) under `podman kube play`.
#
#   scripts/containers.sh build [gateway feedback nginx triton trainer]   every image (default) or the named ones
#   scripts/containers.sh up | down          the compose stack on 127.0.0.1, until every container is healthy
#                                            (down removes its volumes)
#   scripts/containers.sh kube-play | kube-down        the local overlay's workloads as podman pods
#   scripts/containers.sh sizes              each image's size
#   scripts/containers.sh test [PYTEST ARGS]          the container tests (default: all of tests/containers)
#
# Base images: each Dockerfile's default (python:3.11 slim, nginx-unprivileged, postgres:15) is used when it is
# here or can be pulled; otherwise a stand-in is built here: Debian bookworm from Debian's own packages
# (debootstrap, cached as .cache/containers/bookworm-python.tar; its python3 is 3.11) for Python, and
# docker/standin/{nginx,postgres}.Dockerfile on top of it. RECSYS_PYTHON_IMAGE, RECSYS_NGINX_IMAGE and
# RECSYS_POSTGRES_IMAGE name other bases.
# Images are built in Docker's format: podman's default (OCI) has no HEALTHCHECK and drops it.
# Package indexes: PyPI as this machine's pip configuration says (its index-url, if any, and its CA certificate,
# passed as the build secret pip-cert; nothing of it is written into the repository). torch: the CPU wheel of
# torch 2.13.0 found in pip's find-links folders goes in as the build context torch-wheels; without one, the
# Dockerfiles' default (PyTorch's CPU index) stays.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${RECSYS_CONTAINER_CACHE:-$ROOT/.cache/containers}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$ROOT/docker/podman/containers.conf}"
PYTHON="${PYTHON:-python3}"
[ -x "$ROOT/.venv/bin/python" ] && PYTHON="$ROOT/.venv/bin/python"
IMAGES=(gateway feedback nginx triton trainer)
TORCH_WHEEL_GLOB="torch-2.13.0+cpu-cp311-cp311-*.whl"
COMPOSE_FILE="$ROOT/docker/compose.yaml"
PODMAN_COMPOSE_VERSION=1.2.0
# The services the compose test drives (Prometheus and Grafana need their upstream images; see the README).
STACK_SERVICES=(postgres triton feedback gateway nginx)

log() { echo "containers: $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

need_podman() {
  local missing=()
  for tool in podman runc buildah debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || die "podman, runc, buildah and debootstrap are needed: apt-get install -y ${missing[*]}"
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc buildah debootstrap >/dev/null
  fi
}

# --- base images -------------------------------------------------------------------------------------------------

qualified() {
  # A short Docker Hub name as podman pulls it (it knows no unqualified-search registry here).
  local first="${1%%/*}"
  if [[ "$1" != */* ]]; then echo "docker.io/library/$1"
  elif [[ "$first" == *.* || "$first" == *:* || "$first" == localhost ]]; then echo "$1"
  else echo "docker.io/$1"; fi
}

available() {
  # Whether an image is here or can be pulled now.
  podman image exists "$1" && return 0
  podman image exists "$(qualified "$1")" && return 0
  [ "${RECSYS_PULL_BASES:-1}" = 1 ] && podman pull -q "$(qualified "$1")" >/dev/null 2>&1
}

debian_mirror() {
  # The Debian mirror this machine's apt uses (deb822 or one-line sources).
  local uri
  uri="$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
    /etc/apt/sources.list 2>/dev/null | grep -m1 -E '/debian/?( |$)' | grep -oE 'https?://[^ ]+' || true)"
  echo "${uri:-http://deb.debian.org/debian}"
}

standin_python() {
  # Debian bookworm with python3 (3.11), pip and libpython (Triton's python backend loads it), imported as an image.
  local image=localhost/recsys-standin-python:3.11-bookworm tarball="$CACHE/bookworm-python.tar"
  if ! podman image exists "$image"; then
    if [ ! -s "$tarball" ]; then
      local rootfs="$CACHE/rootfs"
      rm -rf "$rootfs"
      log "debootstrap bookworm from $(debian_mirror) (about a minute)"
      debootstrap --variant=minbase --include=python3,python3-pip,python-is-python3,libpython3.11,ca-certificates \
        bookworm "$rootfs" "$(debian_mirror)" >"$CACHE/debootstrap.log" 2>&1 ||
        die "debootstrap failed: see $CACHE/debootstrap.log"
      # pip installs into /usr/local as in the official image, not refused as an "externally managed" system.
      rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
      rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
      tar -C "$rootfs" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
      rm -rf "$rootfs"
    fi
    # The environment the official image declares (a plain `podman run` adds PATH itself, `kube play` does not).
    podman import --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' "$tarball" "$image" >/dev/null
  fi
  echo "$image"
}

standin_from() {
  # docker/standin/NAME.Dockerfile on the stand-in Debian base: built each time (podman's layer cache makes an
  # unchanged one a few seconds), so a change to the Dockerfile or its entrypoint takes effect.
  local name="$1" tag="$2" base
  local image="localhost/recsys-standin-$name:$tag"
  base="$(standin_python)"
  log "building the stand-in $image"
  (cd "$ROOT" && podman build --format docker --network host --build-arg "BASE_IMAGE=$base" \
    -f "docker/standin/$name.Dockerfile" -t "$image" .) >"$CACHE/build-standin-$name.log" 2>&1 || {
    tail -30 "$CACHE/build-standin-$name.log" >&2
    die "building $image failed: see $CACHE/build-standin-$name.log"
  }
  echo "$image"
}

dockerfile_default() {
  # The default of a Dockerfile's ARG (the production base).
  sed -nE "s/^ARG $2=(.*)$/\1/p" "$ROOT/docker/$1.Dockerfile" | head -1
}

resolve_bases() {
  local default
  default="$(dockerfile_default gateway PYTHON_IMAGE)"
  PYTHON_IMAGE="${RECSYS_PYTHON_IMAGE:-}"
  if [ -z "$PYTHON_IMAGE" ]; then
    if available "$default"; then PYTHON_IMAGE="$default"; else
      log "$default cannot be pulled: using a stand-in built from Debian's packages"
      PYTHON_IMAGE="$(standin_python)"
    fi
  fi
  default="$(dockerfile_default nginx NGINX_IMAGE)"
  NGINX_IMAGE="${RECSYS_NGINX_IMAGE:-}"
  if [ -z "$NGINX_IMAGE" ]; then
    if available "$default"; then NGINX_IMAGE="$default"; else NGINX_IMAGE="$(standin_from nginx 1.22-bookworm)"; fi
  fi
  default="$(sed -nE 's/.*RECSYS_POSTGRES_IMAGE:-([^}]+)}.*/\1/p' "$COMPOSE_FILE" | head -1)"
  POSTGRES_IMAGE="${RECSYS_POSTGRES_IMAGE:-}"
  if [ -z "$POSTGRES_IMAGE" ]; then
    if available "$default"; then POSTGRES_IMAGE="$default"; else POSTGRES_IMAGE="$(standin_from postgres 15-bookworm)"; fi
  fi
  mkdir -p "$CACHE"
  printf 'RECSYS_PYTHON_IMAGE=%s\nRECSYS_NGINX_IMAGE=%s\nRECSYS_POSTGRES_IMAGE=%s\n' \
    "$PYTHON_IMAGE" "$NGINX_IMAGE" "$POSTGRES_IMAGE" >"$CACHE/bases.env"
}

# --- what pip needs inside a build -------------------------------------------------------------------------------

pip_setting() {
  # One pip setting as this machine's configuration resolves it (environment first, as pip does).
  "$PYTHON" -m pip config list 2>/dev/null | sed -nE "s/^(:env:|global)\.$1='(.*)'$/\2/p" | head -1
}

pip_build_args() {
  PIP_ARGS=()
  local index cert links
  index="${PIP_INDEX_URL:-$(pip_setting index-url)}"
  [ -n "$index" ] && PIP_ARGS+=(--build-arg "PIP_INDEX_URL=$index")
  cert="${PIP_CERT:-$(pip_setting cert)}"
  [ -n "$cert" ] && [ -f "$cert" ] && PIP_ARGS+=(--secret "id=pip-cert,src=$cert")
  TORCH_ARGS=()
  links="${PIP_FIND_LINKS:-$(pip_setting find-links)}"
  local dir wheel=""
  for dir in $links; do
    dir="${dir#file://}"
    [ -d "$dir" ] || continue
    wheel="$(find "$dir" -maxdepth 1 -name "$TORCH_WHEEL_GLOB" | head -1)"
    [ -n "$wheel" ] && break
  done
  if [ -n "$wheel" ]; then
    # Only that wheel in the context (a hard link where possible): its +cpu version outranks PyPI's CUDA build,
    # and torch's own dependencies come from PyPI.
    mkdir -p "$CACHE/torch-wheels"
    [ -e "$CACHE/torch-wheels/$(basename "$wheel")" ] ||
      ln "$wheel" "$CACHE/torch-wheels/" 2>/dev/null || cp "$wheel" "$CACHE/torch-wheels/"
    TORCH_ARGS=(--build-context "torch-wheels=$CACHE/torch-wheels"
      --build-arg "TORCH_INDEX_URL=${index:-https://pypi.org/simple}")
  fi
}

# --- build ---------------------------------------------------------------------------------------------------------

build_one() {
  local name="$1" started elapsed
  local args=(--format docker --network host --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" -f "docker/$name.Dockerfile"
    "${PIP_ARGS[@]}")
  case "$name" in
    nginx) args+=(--build-arg "NGINX_IMAGE=$NGINX_IMAGE") ;;
    triton) args+=(--target local "${TORCH_ARGS[@]}") ;;
    trainer) args+=("${TORCH_ARGS[@]}") ;;
  esac
  log "building recsys-$name:local"
  started="$(date +%s)"
  (cd "$ROOT" && podman build "${args[@]}" -t "recsys-$name:local" .) >"$CACHE/build-$name.log" 2>&1 || {
    tail -30 "$CACHE/build-$name.log" >&2
    die "building recsys-$name:local failed: see $CACHE/build-$name.log"
  }
  elapsed=$(($(date +%s) - started))
  printf '%s\t%s\t%s\n' "$name" "$elapsed" "$(image_size "recsys-$name:local")" >>"$CACHE/build-times.tsv"
  log "recsys-$name:local built in ${elapsed} s ($(image_size "recsys-$name:local"))"
}

image_size() {
  podman image inspect --format '{{.Size}}' "$1" | awk '{ printf "%.0f MB", $1 / 1e6 }'
}

cmd_build() {
  local names=("$@")
  [ "${#names[@]}" -gt 0 ] || names=("${IMAGES[@]}")
  for name in "${names[@]}"; do
    [[ " ${IMAGES[*]} " == *" $name "* ]] || die "no image called $name (one of: ${IMAGES[*]})"
  done
  need_podman
  mkdir -p "$CACHE"
  resolve_bases
  pip_build_args
  for name in "${names[@]}"; do build_one "$name"; done
  cmd_sizes "${names[@]}"
}

cmd_sizes() {
  local names=("$@")
  [ "${#names[@]}" -gt 0 ] || names=("${IMAGES[@]}")
  for name in "${names[@]}"; do
    podman image exists "recsys-$name:local" && printf '%-24s %s\n' "recsys-$name:local" "$(image_size "recsys-$name:local")"
  done
}

# --- the compose stack ---------------------------------------------------------------------------------------------

podman_compose() {
  # podman 4.3 has no `podman compose`: podman-compose from PyPI, kept under .cache.
  local tools="$CACHE/podman-compose-$PODMAN_COMPOSE_VERSION"
  if [ ! -d "$tools/podman_compose.py" ] && [ ! -f "$tools/podman_compose.py" ]; then
    "$PYTHON" -m pip install -q --target "$tools" "podman-compose==$PODMAN_COMPOSE_VERSION" >&2
  fi
  [ -f "$CACHE/bases.env" ] || die "no images built yet: run scripts/containers.sh build first"
  set -a
  # shellcheck disable=SC1091
  . "$CACHE/bases.env"
  set +a
  PYTHONPATH="$tools" "$PYTHON" -m podman_compose -f "$COMPOSE_FILE" "$@"
}

stack_secrets() {
  # The stack's database passwords (the writer's role's, PostgreSQL's superuser's), writer token and Triton key:
  # the caller's, else ones made once for this checkout and kept, readable by the owner only, in
  # .cache/containers/stack.env (the database volume keeps the first passwords).
  local file="$CACHE/stack.env" name value
  mkdir -p "$CACHE"
  (umask 077 && touch "$file")
  for name in RECSYS_DB_PASSWORD RECSYS_DB_ADMIN_PASSWORD RECSYS_FEEDBACK_TOKEN RECSYS_TRITON_API_KEY; do
    grep -q "^$name=" "$file" || echo "$name=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(16))')" >>"$file"
  done
  while IFS='=' read -r name value; do
    [ -n "${!name:-}" ] || export "$name=$value"
  done <"$file"
}

project_containers() {
  podman ps -a --filter "label=io.podman.compose.project=recsys" --format '{{.Names}}'
}

wait_healthy() {
  # podman runs health checks from systemd timers, which a machine without systemd lacks: run each container's
  # own check until it passes (a container without one counts once it runs).
  local deadline=$(($(date +%s) + ${RECSYS_UP_TIMEOUT:-300})) pending name
  while :; do
    pending=()
    for name in $(project_containers); do
      if [ "$(podman inspect --format '{{.State.Running}}' "$name")" != true ]; then
        podman logs --tail 30 "$name" >&2 || true
        die "$name is not running"
      fi
      if [ -n "$(podman inspect --format '{{.Config.Healthcheck}}' "$name" | grep -v '^<nil>$' || true)" ]; then
        podman healthcheck run "$name" >/dev/null 2>&1 || pending+=("$name")
      fi
    done
    [ "${#pending[@]}" -eq 0 ] && break
    if [ "$(date +%s)" -ge "$deadline" ]; then die "not healthy after ${RECSYS_UP_TIMEOUT:-300} s: ${pending[*]}"; fi
    sleep 2
  done
  log "healthy: $(project_containers | tr '\n' ' ')"
}

cmd_up() {
  stack_secrets
  podman_compose up -d --no-build "${@:-${STACK_SERVICES[@]}}" >&2
  wait_healthy
}

cmd_down() {
  stack_secrets
  podman_compose down -v >&2
  if podman network exists recsys_default; then podman network rm -f recsys_default >/dev/null; fi
}

# --- the local overlay under podman kube play ---------------------------------------------------------------------

KUBE_NETWORK=recsys-kube
KUBE_SUBNET="${RECSYS_KUBE_SUBNET:-10.89.201.0/24}"

cmd_kube_play() {
  # Each workload of the local overlay as a pod on its own address of a podman network (scripts/kube_play.py says
  # what podman 4.3 plays and what it does not), then the manifests' probes until they pass.
  [ -f "$CACHE/bases.env" ] || die "no images built yet: run scripts/containers.sh build first"
  local out="$CACHE/kube-play" images=() name value file
  while IFS='=' read -r name value; do
    case "$name" in
      RECSYS_POSTGRES_IMAGE) images+=(--image "postgres:15.10-bookworm=$value") ;;
      RECSYS_NGINX_IMAGE | RECSYS_PYTHON_IMAGE) ;;
    esac
  done <"$CACHE/bases.env"
  stack_secrets
  cmd_kube_down
  (cd "$ROOT" && "$PYTHON" -m scripts.kube_play plan k8s/overlays/local "$out" --subnet "$KUBE_SUBNET" \
    --db-password "$RECSYS_DB_PASSWORD" "${images[@]}")
  podman network exists "$KUBE_NETWORK" || podman network create --subnet "$KUBE_SUBNET" "$KUBE_NETWORK" >/dev/null
  for file in "$out"/secrets/*.json; do
    [ -e "$file" ] || continue
    podman secret create "$(basename "$file" .json)" "$file" >/dev/null
  done
  for file in "$out"/*.yaml; do
    log "kube play $(basename "$file") at $(cat "${file%.yaml}.ip")"
    podman kube play --network "$KUBE_NETWORK" --ip "$(cat "${file%.yaml}.ip")" "$file" >/dev/null
  done
  (cd "$ROOT" && "$PYTHON" -m scripts.kube_play ready "$out" --timeout "${RECSYS_UP_TIMEOUT:-300}")
}

cmd_kube_down() {
  local out="$CACHE/kube-play" file
  for file in "$out"/*.yaml; do
    [ -e "$file" ] || continue
    podman kube down "$file" >/dev/null 2>&1 || true
  done
  if [ -f "$out/plan.json" ]; then  # the claims' and ConfigMaps' named volumes
    "$PYTHON" -c 'import json, sys; print("\n".join(json.load(open(sys.argv[1]))["volumes"]))' "$out/plan.json" |
      xargs -r podman volume rm -f >/dev/null 2>&1 || true
  fi
  for file in "$out"/secrets/*.json; do
    [ -e "$file" ] || continue
    podman secret rm "$(basename "$file" .json)" >/dev/null 2>&1 || true
  done
  if podman network exists "$KUBE_NETWORK"; then podman network rm -f "$KUBE_NETWORK" >/dev/null; fi
  rm -rf "$out/empty-dirs"
}

cmd_test() {
  # The container tests (tests/containers), which the default test run skips: they build and run every image.
  # Only tests/containers: pytest's own options pass through, paths must lie under it (never the whole suite).
  local arg paths=()
  for arg in "$@"; do
    case "$arg" in
      tests/containers*) paths+=("$arg") ;;
      */* | *.py) die "$arg: only paths under tests/containers" ;;
    esac
  done
  [ "${#paths[@]}" -gt 0 ] || set -- "$@" tests/containers
  cd "$ROOT" && RECSYS_CONTAINER_TESTS=1 "$PYTHON" -m pytest "$@"
}

main() {
  local command="${1:-}"
  [ $# -gt 0 ] && shift
  case "$command" in
    build) cmd_build "$@" ;;
    sizes) cmd_sizes "$@" ;;
    up) cmd_up "$@" ;;
    down) cmd_down ;;
    kube-play) cmd_kube_play ;;
    kube-down) cmd_kube_down ;;
    test) cmd_test "$@" ;;
    *) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
}

main "$@"
