#!/usr/bin/env bash
# The README's demo on this machine, timed: a fresh study of 12 trials, the export, then the
# top 2 and the baseline re-measured in fresh processes (export-best --verify), and the full run
# at the exported max_lr against base_lr. Results land in benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results
work=$(mktemp -d)
storage="sqlite:///$work/demo.db"
start=$(date +%s.%N)
autotune search --storage "$storage" --trials 12 --seed 0 | tee "$out/demo_search.txt"
end=$(date +%s.%N)
python3 -c "print(f'search wall time: {$end - $start:.1f} s')" | tee -a "$out/demo_search.txt"
autotune export-best --storage "$storage" --out "$out/demo_best.yaml" | tee "$out/demo_export.txt"
autotune export-best --storage "$storage" --verify 2 --rounds 3 --out "$out/demo_best_verified.yaml" \
  | tee "$out/demo_export_verified.txt"
autotune report --storage "$storage" --plots "$work/plots" > "$out/demo_report.txt"
cp "$work"/plots/*.png "$out/"
python3 benchmarks/lr_full_run.py --export "$out/demo_best.yaml" --epochs 2 --out "$out/lr_full_run.json"
rm -rf "$work"
