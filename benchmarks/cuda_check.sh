#!/usr/bin/env bash
# The CUDA paths, run for real on a GPU machine: every knob through autotune.training
# (cuda_knobs.py), a search of the demo on CUDA with every precision, pinned memory and
# compile, its export in each framework's form, the full run of the export, and a search
# that meets the CUDA memory budget (out-of-memory for real). Figures go to $OUT (default
# benchmarks/results/cuda).
#
#   OUT=benchmarks/results/cuda bash benchmarks/cuda_check.sh
set -uo pipefail
OUT=${OUT:-benchmarks/results/cuda}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 COLUMNS=160
AT="python3 -m autotune.cli"
S="sqlite:///$OUT/cuda.db"
section() { echo; echo "=== $* ($(date +%T))"; }

section machine
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

section "CUDA tests"
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_device.py tests/test_training.py -k "device or backend or grad_scaler or autocast" 2>&1 | tail -5

section "every knob through autotune.training"
timeout 130 python3 benchmarks/cuda_knobs.py --out "$OUT/cuda_knobs.json"

section "search of the demo on CUDA"
timeout 110 $AT search --device cuda --space benchmarks/spaces/cuda.yaml --trials 12 --timeout 80s --trial-timeout 40s \
  --storage "$S" --study demo-cuda --seed 0 2>&1 | tee "$OUT/search.txt"
$AT export-best --storage "$S" --study demo-cuda --out "$OUT/best.yaml" 2>&1 | tee "$OUT/export.txt"
for f in hf lightning accelerate; do $AT export-best --storage "$S" --study demo-cuda --format $f --out "$OUT/best_$f.yaml" >/dev/null; done
$AT report --storage "$S" --study demo-cuda 2>&1 | tee "$OUT/report.txt"

section "the full run of the export"
timeout 60 $AT train --config "$OUT/best.yaml" --device cuda --time 25s --storage "$S" \
  --checkpoint-dir /tmp/ckpt --out "$OUT/run_record.json" 2>&1 | tail -25

section "CUDA out of memory under a 2 GiB budget"
timeout 60 $AT search --workload benchmarks/workloads/wide_mlp.py:workload --device cuda --max-memory 2GiB \
  --space benchmarks/spaces/wide_mlp_oom.yaml --trials 5 --timeout 45s --no-lr-find --storage "$S" \
  --study wide-mlp-oom --seed 0 2>&1 | tee "$OUT/oom_search.txt"
