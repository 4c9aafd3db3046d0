#!/usr/bin/env bash
# Builds, on this machine, what benchmarks/gpu_triton.sh needs on a GPU machine that has no network and no Triton:
#
#   .cache/gpu_bundle/triton.tar.xz     from the installed nvidia-pytriton wheel: pytriton/tritonserver/{bin,backends,
#                                       caches}, python_backend_stubs/<STUBS>/ and nvidia_pytriton.libs/ (without the
#                                       bundled libpython3.13), plus perf_analyzer/bin/perf_analyzer (tritonclient 2.51)
#   .cache/gpu_bundle/numpy-1.26.4-cp312-*.whl   numpy < 2 for the python-backend stubs (pip install --target there)
#   .cache/gpu_bundle/wheels/*.whl      the dependencies the GPU image lacks (pydantic, tritonclient, ...)
#   .cache/gpu_bundle/MANIFEST          sizes and sha256 sums
#
# The whole folder stays under the device tool's 64 MiB carry limit (about 50 MiB). Idempotent: rebuilds the tarball
# only when asked (FORCE=1) or when it is missing.
#
#   benchmarks/gpu_bundle.sh                              # for the GPU image's Python 3.12
#   STUBS="3.11 3.12" NUMPY_PY=3.11 BUNDLE=/tmp/b benchmarks/gpu_bundle.sh   # a bundle to smoke-test here (3.11)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
BUNDLE=${BUNDLE:-.cache/gpu_bundle}
STUBS=${STUBS:-3.12}
NUMPY_PY=${NUMPY_PY:-3.12}
mkdir -p "$BUNDLE"

site=$("$PY" - <<'EOF'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("pytriton")
if spec is None or not spec.submodule_search_locations:
    sys.exit("nvidia-pytriton is not installed in this Python")
print(pathlib.Path(next(iter(spec.submodule_search_locations))).parent)
EOF
)

pa=$(benchmarks/install_perf_analyzer.sh)

if [ "${FORCE:-0}" = 1 ] || [ ! -s "$BUNDLE/triton.tar.xz" ]; then
    stage=$(mktemp -d)
    trap 'rm -rf "$stage"' EXIT
    dist=pytriton/tritonserver
    mkdir -p "$stage/$dist/python_backend_stubs" "$stage/perf_analyzer/bin"
    cp -a "$site/$dist/bin" "$site/$dist/caches" "$stage/$dist/"
    mkdir -p "$stage/$dist/backends/python"
    cp -a "$site/$dist/backends/python/libtriton_python.so" "$site/$dist/backends/python/triton_python_backend_utils.py" \
        "$stage/$dist/backends/python/"
    for v in $STUBS; do
        [ -d "$site/$dist/python_backend_stubs/$v" ] || { echo "no stub for Python $v in $site/$dist" >&2; exit 1; }
        cp -a "$site/$dist/python_backend_stubs/$v" "$stage/$dist/python_backend_stubs/"
    done
    mkdir -p "$stage/nvidia_pytriton.libs"
    find "$site/nvidia_pytriton.libs" -maxdepth 1 -type f ! -name 'libpython3*' -exec cp -a {} "$stage/nvidia_pytriton.libs/" \;
    cp -a "$pa" "$stage/perf_analyzer/bin/perf_analyzer"
    echo "building $BUNDLE/triton.tar.xz (xz -9, takes a minute) ..." >&2
    tar -C "$stage" -cf - pytriton nvidia_pytriton.libs perf_analyzer | xz -T2 -9 >"$BUNDLE/triton.tar.xz.tmp"
    mv -f "$BUNDLE/triton.tar.xz.tmp" "$BUNDLE/triton.tar.xz"
fi

tag=cp${NUMPY_PY/./}
if ! ls "$BUNDLE"/numpy-1.26.4-"$tag"-*.whl >/dev/null 2>&1; then
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$NUMPY_PY" \
        --platform manylinux2014_x86_64 numpy==1.26.4 -d "$BUNDLE"
fi

# The project's dependencies the GPU image lacks (`recsys publish` / `render-repo` import them), at the versions of
# this environment; gpu_triton.sh installs them only when its Python cannot import them.
mkdir -p "$BUNDLE/wheels"
pins=$("$PY" -c '
from importlib.metadata import version
names = ["pydantic", "pydantic-core", "pydantic-settings", "python-dotenv", "annotated-types", "typing-inspection",
         "tritonclient", "python-rapidjson", "protobuf", "typing-extensions"]
print(" ".join(f"{n}=={version(n)}" for n in names))')
# shellcheck disable=SC2086  # one word per pin
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$NUMPY_PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$BUNDLE/wheels" $pins

(cd "$BUNDLE" && { du -b ./*.xz ./*.whl ./wheels/*.whl; sha256sum ./*.xz ./*.whl ./wheels/*.whl; } >MANIFEST.tmp \
    && mv -f MANIFEST.tmp MANIFEST)
total=$(du -sb "$BUNDLE" | cut -f1)
echo "bundle $BUNDLE: $((total / 1048576)) MiB" >&2
if [ "$total" -gt $((64 * 1048576)) ]; then
    echo "warning: over the 64 MiB the device tool carries" >&2
fi
echo "$BUNDLE"
