#!/usr/bin/env bash
# On a GPU machine with no network and no Triton: unpack the bundle of benchmarks/gpu_bundle.sh, install numpy 1.26
# for the python-backend stubs, and run benchmarks/gpu_triton.py (1M items x 64 fp16, python scorer on the GPU,
# perf_analyzer over gRPC at concurrency 1, 8, 64, 256). Everything it writes goes to $OUT.
#
# Run from the repository root, with the bundle carried along (it is git-ignored), e.g. through the device tool:
#   run(command="bash benchmarks/gpu_triton.sh", carry=[".cache/gpu_bundle"], timeout_s=540)
#
# Environment (all optional):
#   OUT       results folder (default ./gpu_out)          PY      Python with torch (default /opt/torch/.venv/bin/python)
#   BUNDLE    the bundle (default .cache/gpu_bundle)      DEVICE  cuda (default) or cpu (smoke test without a GPU)
#   ARGS      extra arguments for benchmarks.gpu_triton, e.g. "--items 200000 --concurrency 1,8"
#   BUDGET_S  hard stop for the Python part (default 480)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
PY=${PY:-/opt/torch/.venv/bin/python}
BUNDLE=${BUNDLE:-.cache/gpu_bundle}
DEVICE=${DEVICE:-cuda}
BUDGET_S=${BUDGET_S:-480}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec > >(tee -a "$OUT/gpu_triton.console.txt") 2>&1
echo "== $(date -u +%FT%TZ) $(hostname) $(nproc) cores; python: $PY"

[ -x "$PY" ] || { echo "no Python at $PY (set PY=...)" >&2; exit 2; }
[ -s "$BUNDLE/triton.tar.xz" ] || { echo "no $BUNDLE/triton.tar.xz: run benchmarks/gpu_bundle.sh and carry it" >&2; exit 2; }

WORK=$(mktemp -d /tmp/gpu_triton.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
t0=$(date +%s)
tar -C "$WORK" -xJf "$BUNDLE/triton.tar.xz"
echo "== bundle unpacked in $(($(date +%s) - t0)) s"

# numpy < 2 for the stubs, in a folder of its own that goes first on their PYTHONPATH (the Python's own numpy 2.x
# stays for this driver). Pick the wheel of this Python; pip --target, or unzip if pip refuses.
tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info.major}{sys.version_info.minor}")')
NUMPY_DIR=""
wheel=$(find "$BUNDLE" -maxdepth 1 -name "numpy-1.26.4-$tag-$tag-*.whl" | head -n 1)
if [ -n "$wheel" ]; then
    NUMPY_DIR="$WORK/numpy126"
    if ! "$PY" -m pip install --quiet --no-index --no-deps --target "$NUMPY_DIR" "$wheel"; then
        echo "pip --target failed; unzipping the wheel instead"
        "$PY" -m zipfile -e "$wheel" "$NUMPY_DIR"
    fi
    PYTHONPATH="$NUMPY_DIR" "$PY" -c 'import numpy; print("stub numpy", numpy.__version__, numpy.__file__)'
elif "$PY" -c 'import numpy, sys; sys.exit(int(numpy.__version__.split(".")[0]) >= 2)'; then
    echo "no numpy wheel for $tag in the bundle; this Python's numpy is < 2, using it"
else
    echo "no numpy 1.26 wheel for $tag in $BUNDLE and this Python has numpy 2: stub outputs would be empty" >&2
    exit 2
fi

{ nvidia-smi || true; "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'; } \
    >"$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

set +e
# shellcheck disable=SC2086  # ARGS is a list of words on purpose
timeout --signal=INT --kill-after=30 "$BUDGET_S" "$PY" -m benchmarks.gpu_triton \
    --triton-root "$WORK" ${NUMPY_DIR:+--numpy-dir "$NUMPY_DIR"} --work "$WORK/run" --out "$OUT" \
    --device "$DEVICE" ${ARGS:-}
rc=$?
set -e
echo "== exit $rc after $(($(date +%s) - t0)) s; results in $OUT"
ls -la "$OUT"
exit "$rc"
