#!/usr/bin/env bash
# Installs Triton's perf_analyzer 2.51.0 into a tools folder, OUTSIDE the project's venv, and prints its path.
#
# The binary comes from the `tritonclient==2.51.0` manylinux1 wheel (PyPI): newer ones (perf-analyzer 2.58+,
# tritonclient >= 2.58) need GLIBC 2.38 and do not run on Debian 12 (2.36). The wheel is only downloaded and
# unzipped (never pip-installed: it would pin an old tritonclient in .venv). The binary wants two libraries that
# nvidia-pytriton (a project dependency) already ships under hashed names in site-packages/nvidia_pytriton.libs;
# this script links them under the names the binary asks for:
#
#   <tools>/lib/libb64.so.0d      -> nvidia_pytriton.libs/libb64-*.so.0d
#   <tools>/lib/libcudart.so.12   -> nvidia_pytriton.libs/libcudart-*.so.12*
#
# Run perf_analyzer with LD_LIBRARY_PATH=<tools>/lib (benchmarks/harness/perf_analyzer.py does that for you).
#
#   benchmarks/install_perf_analyzer.sh                 # into .cache/tools/perf_analyzer (git-ignored)
#   TOOLS_DIR=/somewhere benchmarks/install_perf_analyzer.sh
#   PYTHON=/path/to/python benchmarks/install_perf_analyzer.sh   # the env that has nvidia-pytriton
#
# Idempotent: a second run only checks that the binary starts. The last line of stdout is the binary's path.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
VERSION=2.51.0
TOOLS=${TOOLS_DIR:-.cache/tools/perf_analyzer}
mkdir -p "$TOOLS/bin" "$TOOLS/lib"
TOOLS=$(cd "$TOOLS" && pwd)
BIN="$TOOLS/bin/perf_analyzer"

libs=$("$PY" - <<'EOF'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("pytriton")
if spec is None or not spec.submodule_search_locations:
    sys.exit("nvidia-pytriton is not installed in this Python (pip install -e . installs it)")
print(pathlib.Path(next(iter(spec.submodule_search_locations))).parent / "nvidia_pytriton.libs")
EOF
)
[ -d "$libs" ] || { echo "no $libs: incomplete nvidia-pytriton install" >&2; exit 1; }

link_lib() {  # link_lib <name the binary wants> <glob inside nvidia_pytriton.libs>
    local want=$1 pattern=$2 found
    found=$(find "$libs" -maxdepth 1 -name "$pattern" | sort | head -n 1)
    [ -n "$found" ] || { echo "no $pattern in $libs" >&2; exit 1; }
    ln -sfn "$found" "$TOOLS/lib/$want"
}
link_lib libb64.so.0d 'libb64-*.so.0d'
link_lib libcudart.so.12 'libcudart-*.so.12*'

if [ ! -x "$BIN" ] || ! grep -qx "$VERSION" "$TOOLS/VERSION" 2>/dev/null; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: "tritonclient==$VERSION" -d "$work" >&2
    wheel=$(find "$work" -maxdepth 1 -name "tritonclient-$VERSION-*.whl" | head -n 1)
    [ -n "$wheel" ] || { echo "pip download did not produce a tritonclient $VERSION wheel" >&2; exit 1; }
    # A wheel is a zip; only the one binary is taken out of it.
    "$PY" -m zipfile -e "$wheel" "$work/unpacked" >&2
    src="$work/unpacked/tritonclient-$VERSION.data/data/bin/perf_analyzer"
    [ -f "$src" ] || { echo "the wheel holds no perf_analyzer binary" >&2; exit 1; }
    install -m 0755 "$src" "$BIN.tmp"
    mv -f "$BIN.tmp" "$BIN"
    echo "$VERSION" >"$TOOLS/VERSION"
fi

if ! LD_LIBRARY_PATH="$TOOLS/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$BIN" --version >"$TOOLS/check.txt" 2>&1 \
    || ! grep -q "Perf Analyzer Version $VERSION" "$TOOLS/check.txt"; then
    echo "perf_analyzer does not start here:" >&2
    tail -n 5 "$TOOLS/check.txt" >&2
    exit 1
fi
echo "perf_analyzer $VERSION ready (run with LD_LIBRARY_PATH=$TOOLS/lib)" >&2
echo "$BIN"
