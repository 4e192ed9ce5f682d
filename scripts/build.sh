#!/usr/bin/env bash
# Build and install nlcore into the active environment (against the interpreter's torch).
#   NLCORE_CUDA=AUTO|ON|OFF, NLCORE_CUDA_ARCHS, NLCORE_KERNEL_SET=full|ci, NLCORE_CUDA_PREBUILT
set -euo pipefail
cd "$(dirname "$0")/.."
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
log="${NLCORE_BUILD_LOG:-build/last-build.log}"
mkdir -p "$(dirname "$log")"
echo "[nlcore] building (log: $log)" >&2
if ! python -m pip install --no-build-isolation --no-deps -v . >"$log" 2>&1; then
  grep -v "Location 'file" "$log" | tail -60 >&2
  echo "[nlcore] build failed; full log in $log" >&2
  exit 1
fi
grep -E "nlcore: (torch|CUDA)" "$log" | sed 's/^/[nlcore] /' >&2 || true
