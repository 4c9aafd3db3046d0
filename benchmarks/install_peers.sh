#!/usr/bin/env bash
# Installs the benchmark peers (the `bench` extra of pyproject.toml) into the repository's venv:
# implicit 0.7.3 (a wheel) and lightfm 1.17 (built from its sdist).
#
# lightfm 1.17's setup.py does `__builtins__.__LIGHTFM_SETUP__ = True`, which breaks when setuptools exec()s it
# for a PEP 517 build (there `__builtins__` is a dict): pip >= 24 always builds that way. When the plain install
# fails, this script fetches the sdist with a throwaway pip 23 (legacy metadata step), patches that line to
# `import builtins; builtins.__LIGHTFM_SETUP__ = True` and builds it without build isolation.
#
#   benchmarks/install_peers.sh                 # into .venv
#   PYTHON=/path/to/python benchmarks/install_peers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

"$PY" -m pip install implicit==0.7.3 wheel setuptools
if "$PY" -c "import lightfm" 2>/dev/null; then
    "$PY" -c "import lightfm; print('lightfm', lightfm.__version__, 'already installed')"
    exit 0
fi
if "$PY" -m pip install --no-build-isolation lightfm==1.17; then
    exit 0
fi

echo "plain lightfm install failed: building a patched sdist" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m venv "$work/pip23"
"$work/pip23/bin/python" -m pip install -q "pip<24" setuptools wheel
"$work/pip23/bin/python" -m pip download -q --no-deps --no-build-isolation --no-use-pep517 lightfm==1.17 -d "$work"
tar xzf "$work/lightfm-1.17.tar.gz" -C "$work"
sed -i 's/^__builtins__\.__LIGHTFM_SETUP__ = True/import builtins; builtins.__LIGHTFM_SETUP__ = True/' \
    "$work/lightfm-1.17/setup.py"
"$PY" -m pip install --no-build-isolation "$work/lightfm-1.17"
"$PY" -c "import lightfm; print('lightfm', lightfm.__version__, 'installed')"
