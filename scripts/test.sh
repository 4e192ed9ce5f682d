#!/usr/bin/env bash
# The test command: on a fresh machine, creates the cached CPU venv (torch 2.13), builds
# nlcore and runs the test suite. Extra arguments go to pytest (e.g. -k newton, -m cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/build.sh
python -m pytest tests --durations=15 "$@"
