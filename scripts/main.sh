#!/usr/bin/env bash
# The main job on a fresh machine: creates the cached venv, builds nlcore, then trains the
# tiny Hope on the embedded corpus (the English documentation inside CPython), evaluates it
# and samples from it: validation bits per byte, a sample and the loss curve, in about six
# minutes on 2 CPU cores, the build included. The run folder is out/hope-tiny/.
#   bash scripts/main.sh             the full run (600 steps of 32 windows x 32 bytes)
#   bash scripts/main.sh --quick     a seconds-long smoke run (20 steps)
# Other arguments go to `nlcore train` (e.g. --steps 2000, --device cuda, --seq-len 64).
# The op benchmarks of bench/ are `nlcore bench` (see README "Benchmarks").
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/build.sh
# One CPU thread for torch: the tiny model gains little from a second one (0.21 s a step
# against 0.15 s on an idle 2-core machine), while on a machine shared with other jobs
# torch's spinning threads made a step up to 60x slower (0.3 s with one thread)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
steps=600
train_args=()
for arg in "$@"; do
  if [ "$arg" = "--quick" ]; then
    steps=20; train_args+=(--eval-every 10)
  else
    train_args+=("$arg")
  fi
done
run=out/hope-tiny
echo "== nlcore train"
nlcore train --preset tiny --out "$run" --overwrite --steps "$steps" --seq-len 32 \
  --batch-size 32 ${train_args[@]+"${train_args[@]}"}
echo; echo "== nlcore eval"
nlcore eval --checkpoint "$run"
echo; echo "== nlcore generate"
nlcore generate --checkpoint "$run" --prompt "The with statement is used to" \
  --max-new-tokens 200 --temperature 0.9
