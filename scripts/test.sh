#!/usr/bin/env bash
# The README's second command: lint, type check and the whole test suite (what CI runs via .ci/run).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/bootstrap.sh"
cd "$ROOT"
echo "== ruff"; ruff check . && ruff format --check .
echo "== mypy"; mypy
echo "== import contracts (layers, pyproject.toml [tool.importlinter])"; lint-imports --no-cache
echo "== pytest"; pytest "$@"
