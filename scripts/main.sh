#!/usr/bin/env bash
# The main job on a fresh machine: creates the cached venv, builds nlcore, and runs it.
# Until the Hope trainer lands (issue 8), the main job is the op benchmark suite on this
# machine's device (GPU if present, else CPU): a table on stdout, JSON under bench/out/.
# Extra arguments go to bench/run.py (e.g. --quick, --ops newton_schulz).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/build.sh
python bench/run.py --out bench/out "$@"
