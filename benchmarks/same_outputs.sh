#!/bin/bash
# Does a change leave every result as it was? Trains the same fixed toy runs with two revisions
# of macflow and compares their outputs byte for byte (benchmarks/compare_runs.py: metrics.csv,
# evals.csv, metrics.jsonl, marl_eval.json, final.json and checkpoints; train_seconds, hardware
# and time stamps aside). Every algorithm on toy/coordination (discrete) and toy/intensity
# (continuous), 2 seeds, 200 updates with evaluations and checkpoints, and a run resumed from
# update 100. About 10-15 minutes per revision on 2 CPU cores.
#
#     benchmarks/same_outputs.sh f2e6d74 HEAD      # issue 17's refactor: prints IDENTICAL
set -euo pipefail
OLD=${1:?usage: same_outputs.sh OLD_REV NEW_REV [OUT]}; NEW=${2:?usage: same_outputs.sh OLD_REV NEW_REV [OUT]}
OUT=${3:-$(mktemp -d)}
ROOT=$(git rev-parse --show-toplevel); PY=${PYTHON:-$ROOT/.venv/bin/python}
runs() {  # runs REV DIR
  local tree="$OUT/tree-$1"
  rm -rf "$tree" "$2"; mkdir -p "$2"; git -C "$ROOT" archive "$1" macflow pyproject.toml | tar -x -C "$(mkdir -p "$tree" && echo "$tree")"
  local cli="macflow"; [ -f "$tree/macflow/__main__.py" ] || cli="macflow.cli"
  for task in toy/coordination toy/intensity; do
    for algo in macflow flow-bc bc matd3bc omiga icq diffusion; do
      local extra=(); case $algo in macflow|flow-bc) extra=(--agent.teacher-steps 200);; esac
      (cd "$tree" && PYTHONPATH="$tree" "$PY" -m $cli train --task $task --algo $algo --preset small \
        --steps 200 --log-every 100 --eval-every 100 --checkpoint-every 100 --eval-episodes 8 \
        --final-eval-factor 1 --seeds 0 1 --out "$2" --name "${task#toy/}-$algo" --no-progress \
        "${extra[@]}" > "$2/${task#toy/}-$algo.log" 2>&1) || true  # icq refuses toy/intensity
    done
  done
  for steps in 100 200; do
    local more=(); [ $steps = 200 ] && more=(--resume)
    (cd "$tree" && PYTHONPATH="$tree" "$PY" -m $cli train --task toy/coordination --algo macflow \
      --preset small --steps $steps --log-every 100 --eval-every 100 --checkpoint-every 100 \
      --eval-episodes 8 --final-eval-factor 1 --seeds 0 1 --out "$2" --name resumed --no-progress \
      --agent.teacher-steps 200 "${more[@]}" > /dev/null 2>&1)
  done
}
runs "$OLD" "$OUT/old"
runs "$NEW" "$OUT/new"
"$PY" "$ROOT/benchmarks/compare_runs.py" "$OUT/old" "$OUT/new"
