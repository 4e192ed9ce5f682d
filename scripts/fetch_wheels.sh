#!/usr/bin/env bash
# Download the wheels the GPU machine lacks (it has no registry) into ./wheels/ (git-ignored).
#
#   scripts/fetch_wheels.sh [SPEC ...]      default: nvidia-cutlass==4.2.0.0 (py3-none-any) and
#                                           fla-core==0.6.0 (the DGD benchmark peer, issue 12;
#                                           its needs, torch, triton and einops, are on the image)
#
# Wheels are fetched for CPython 3.12 on manylinux x86_64 (the GPU machine), without their
# dependencies (nvidia-cutlass would pull cuda-python, scipy, ...; only its headers are used).
# A device call then carries them: run(..., carry=["wheels"]); scripts/gpu.sh build installs
# every wheels/*.whl with pip --no-deps --no-index before building.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${NLCORE_PYTHON:-python3}"
[ $# -gt 0 ] || set -- nvidia-cutlass==4.2.0.0 fla-core==0.6.0
mkdir -p wheels
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64 any; do
  platforms+=(--platform "$p")
done
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" --dest wheels "$@"
echo "wheels/:"
ls -l wheels/*.whl
