#!/usr/bin/env bash
# The README's first command: set everything up, then run the main job on the embedded synthetic data.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/bootstrap.sh"
cd "$ROOT"
recsys demo "$@"
