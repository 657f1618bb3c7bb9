#!/usr/bin/env bash
# The workloads in examples/, each searched for about a minute on this machine with the command
# its README row gives, in a throwaway study, then exported (the winner re-measured against the
# baseline with --verify 1; llm_lora also with --prefer balanced and memory) and reported.
# Results land in benchmarks/results/examples/: <name>_search.txt (the machine's load before and
# after, the search, the export, the report) and <name>_best.yaml; llm_lora also writes
# llm_lora_best_balanced.yaml and llm_lora_best_memory.yaml. With `--train`, each export is then
# trained for 20 steps (`autotune train --steps 20`) into <name>_train.txt.
#
#   bash benchmarks/examples.sh [--train] [NAME ...]      # default: every example
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1  # the examples build their models from configs: no hub access
train=0
if [[ "${1:-}" == "--train" ]]; then train=1; shift; fi
names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=(text detection llm_lora vision_sam multitask)
out=benchmarks/results/examples
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

declare -A options=(
  [text]="--trials 6 --timeout 60s"
  [detection]="--trials 6 --timeout 60s"
  [llm_lora]="--trials 6 --timeout 60s --deadline 30m --safety-margin 5m"
  [vision_sam]="--trials 6 --timeout 90s"
  [multitask]="--trials 8 --timeout 60s"
)

for name in "${names[@]}"; do
  storage="sqlite:///$work/$name.db"
  log="$out/${name}_search.txt"
  rm -f "$out/${name}"_*
  # shellcheck disable=SC2086
  {
    echo "\$ autotune search --workload examples/$name.py:workload ${options[$name]} --seed 0"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min; $(nproc) cores)"
    start=$(date +%s.%N)
    autotune search --workload "examples/$name.py:workload" ${options[$name]} --seed 0 --storage "$storage"
    end=$(date +%s.%N)
    python3 -c "print(f'search wall time: {$end - $start:.1f} s')"
    echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "\$ autotune export-best --verify 1 --out $out/${name}_best.yaml"
    # The winner and the baseline re-measured side by side (3 interleaved rounds in fresh processes):
    # a 1-minute search on a shared machine measures each config once, in whatever load there was.
    autotune export-best --storage "$storage" --verify 1 --out "$out/${name}_best.yaml" || true  # refused: nothing feasible
    if [[ $name == llm_lora ]]; then
      for prefer in balanced memory; do
        echo
        echo "\$ autotune export-best --prefer $prefer --out $out/${name}_best_$prefer.yaml"
        autotune export-best --storage "$storage" --prefer "$prefer" --out "$out/${name}_best_$prefer.yaml" || true
      done
    fi
    echo
    echo "\$ autotune report"
    autotune report --storage "$storage"
  } 2>&1 | tee "$log"
  if [[ $train == 1 && -f "$out/${name}_best.yaml" ]]; then
    {
      echo "\$ autotune train --config $out/${name}_best.yaml --steps 20"
      autotune train --config "$out/${name}_best.yaml" --steps 20 --storage "$storage" \
        --checkpoint-dir "$work/checkpoints-$name" --checkpoint-every off --seed 0
    } 2>&1 | tee "$out/${name}_train.txt"
  fi
done
