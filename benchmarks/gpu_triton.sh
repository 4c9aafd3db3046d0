#!/usr/bin/env bash
# Sets up a GPU machine that has no network and no Triton from what benchmarks/gpu_bundle.sh carried, then runs
# benchmarks/gpu_serving.py: the published repository (recsys render-repo --flavour gpu + recsys publish) served by
# the real tritonserver, 1M and 10M items, perf_analyzer at concurrency 1, 16, 64, 256. Everything goes to $OUT.
#
# Run from the repository root, with the bundle carried along (it is git-ignored), e.g. through the device tool:
#   run(command="bash benchmarks/gpu_triton.sh", carry=[".cache/gpu_bundle"], timeout_s=420)
#
# What it installs, into a scratch folder only: the bundle's tritonserver, python backend and perf_analyzer; numpy
# 1.26 for the python-backend stubs (first on their PYTHONPATH: python-model outputs come back empty with numpy 2);
# the project's own missing dependencies as wheels (pydantic, pydantic-settings, tritonclient, ...) with --no-deps.
#
# Environment (all optional):
#   OUT       results folder (default ./gpu_out)          PY      Python with torch (default /opt/torch/.venv/bin/python)
#   BUNDLE    the bundle (default .cache/gpu_bundle)      DEVICE  cuda (default) or cpu (the end-to-end test here)
#   ARGS      extra arguments for benchmarks.gpu_serving, e.g. "--items 1000000 --concurrency 1,64"
#   BUDGET_S  the driver stops starting new measurements after this many seconds (default 370); it is killed at
#             BUDGET_S + 25
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
PY=${PY:-/opt/torch/.venv/bin/python}
BUNDLE=${BUNDLE:-.cache/gpu_bundle}
DEVICE=${DEVICE:-cuda}
BUDGET_S=${BUDGET_S:-370}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec > >(tee -a "$OUT/gpu_serving.console.txt") 2>&1
t0=$(date +%s)
echo "== $(date -u +%FT%TZ) $(hostname) $(nproc) cores; python: $PY"

[ -x "$PY" ] || { echo "no Python at $PY (set PY=...)" >&2; exit 2; }
[ -s "$BUNDLE/triton.tar.xz" ] || { echo "no $BUNDLE/triton.tar.xz: run benchmarks/gpu_bundle.sh and carry it" >&2; exit 2; }

WORK=$(mktemp -d /tmp/gpu_serving.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
tar -C "$WORK" -xJf "$BUNDLE/triton.tar.xz"
tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info.major}{sys.version_info.minor}")')
wheel=$(find "$BUNDLE" -maxdepth 1 -name "numpy-1.26.4-$tag-$tag-*.whl" | head -n 1)
NUMPY_ARGS=()
if [ -n "$wheel" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/numpy126" "$wheel"
    NUMPY_ARGS=(--numpy-dir "$WORK/numpy126")
elif ! "$PY" -c 'import numpy, sys; sys.exit(int(numpy.__version__.split(".")[0]) >= 2)'; then
    echo "no numpy 1.26 wheel for $tag in $BUNDLE and this Python has numpy 2: stub outputs would be empty" >&2
    exit 2
fi
# The project's dependencies this Python lacks (only those: the image's own packages stay as they are).
missing=()
for pair in pydantic:pydantic pydantic_settings:pydantic-settings tritonclient:tritonclient dotenv:python-dotenv \
    rapidjson:python-rapidjson annotated_types:annotated-types typing_inspection:typing-inspection; do
    "$PY" -c "import ${pair%%:*}" 2>/dev/null || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]} (+ protobuf, typing_extensions) from $BUNDLE/wheels into $WORK/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$BUNDLE"/wheels/*.whl
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
echo "== set up in $(($(date +%s) - t0)) s"
{ nvidia-smi || true; df -h /dev/shm /tmp || true; "$PY" -c 'import torch, numpy; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "numpy", numpy.__version__)'; } \
    >"$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

export GPU_SERVING_COMMAND="DEVICE=$DEVICE BUDGET_S=$BUDGET_S${ARGS:+ ARGS=\"$ARGS\"} bash benchmarks/gpu_triton.sh"
set +e
# shellcheck disable=SC2086  # ARGS is a list of words on purpose
timeout --signal=INT --kill-after=15 $((BUDGET_S + 25)) "$PY" -m benchmarks.gpu_serving \
    --triton-root "$WORK" "${NUMPY_ARGS[@]}" --work "$WORK/run" --out "$OUT" --device "$DEVICE" \
    --budget-s "$BUDGET_S" ${ARGS:-}
rc=$?
set -e
echo "== exit $rc after $(($(date +%s) - t0)) s; results in $OUT"
ls -la "$OUT"
exit "$rc"
