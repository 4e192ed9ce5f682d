#!/usr/bin/env bash
# The README's "Results" section: Hope against the same-size Transformer at the tiny preset on
# a CPU, every run trained the same way (same data, optimizer, steps; the better of an equal
# learning-rate sweep per model). Writes OUTDIR/{bpb-*,eval-niah,eval-mqar,eval-continual}/ and
# OUTDIR/results.md (the README table). Run in the environment scripts/env.sh makes, after
# scripts/build.sh. Takes about 12 minutes on 2 cores (Hope is most of it).
#   bash scripts/results_cpu.sh OUTDIR [STEPS_BPB STEPS_TASK STEPS_CONTINUAL]
set -euo pipefail
out=${1:?usage: results_cpu.sh OUTDIR [STEPS_BPB STEPS_TASK STEPS_CONTINUAL]}
sb=${2:-600}; st=${3:-400}; sc=${4:-100}
mkdir -p "$out"
cd "$(dirname "$0")/.."
for model in hope transformer; do
  for lr in 1e-3 3e-3; do
    echo "== bpb: $model lr $lr ($sb steps)"
    nlcore train --model "$model" --preset tiny --out "$out/bpb-$model-$lr" --overwrite \
      --steps "$sb" --seq-len 32 --batch-size 32 --optimizer adamw --lr "$lr" --no-progress \
      --no-plot > "$out/bpb-$model-$lr.log" 2>&1
    nlcore eval --checkpoint "$out/bpb-$model-$lr" --json "$out/bpb-$model-$lr/eval.json" \
      >> "$out/bpb-$model-$lr.log" 2>&1
  done
done
echo "== niah"; nlcore eval --task niah --steps "$st" --out "$out/eval-niah" --no-progress
echo "== mqar"; nlcore eval --task mqar --steps "$st" --out "$out/eval-mqar" --no-progress
echo "== continual"
nlcore eval --task continual --steps "$sc" --out "$out/eval-continual" --no-progress
python scripts/results_table.py "$out" | tee "$out/results.md"
