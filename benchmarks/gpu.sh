#!/usr/bin/env bash
# Every GPU figure of docs/benchmarks.md ("GPU") in one command, in order of importance, each step
# stopped at its own time limit and the whole within a budget, so a short lease still brings back
# the most important figures:
#
#   bash benchmarks/gpu.sh path/to/cifar10.npz [out folder [budget seconds]]
#
# 1. The baseline's sweep as a user runs it: python train.py -m optimizer.lr=1e-2,9.33e-3
#    (50 epochs each), its comparison figure, and explain.py's GradCAM++ grid of its best run.
# 2. python train.py experiment=fast
# 3. python find_lr.py (the baseline's range test: 2 runs, 100 steps, the whole test set)
# 4. What time is left: trainer.compile=true and trainer.deterministic=true (fast recipe, a few
#    epochs each, beside step 2's epochs), then the two-lr sweep on hydra/launcher=joblib with
#    n_jobs=2 (both jobs at once on the one card, trainer.epochs=$JOBLIB_EPOCHS).
#
# The out folder gets summary.md (every table, read back from MLflow by gpu_report.py), the
# pictures and logs.tgz (every console log), refreshed after each step. Runs go to the default
# MLflow store (mlruns/), one experiment per step. Environment:
#   TRAIN_OV="..."   Hydra overrides for every train.py / find_lr.py call (tests: tiny sizes on a CPU)
#   FIND_LR_OV="..." overrides for find_lr.py only
#   STORE_DIR=...    the MLflow store's folder (default mlruns/)
#   PYTHON=python3   the interpreter
#   CAP_<STEP>=s     another time limit for a step (CAP_SWEEP=400, CAP_FAST=150, ...)
set -uo pipefail
cd "$(dirname "$0")/.."
npz=$(realpath "${1:?usage: bash benchmarks/gpu.sh path/to/cifar10.npz [out folder [budget seconds]]}")
out=${2:-outputs/benchmarks/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out" && out=$(realpath "$out")
budget=${3:-560}
py=${PYTHON:-python}
store=$(realpath -m "${STORE_DIR:-mlruns}")
read -r -a ov <<<"tracking.store_dir=$store ${TRAIN_OV:-}"
read -r -a lr_ov <<<"${FIND_LR_OV:-}"
logs=$(mktemp -d)
export SWEEPLAB_CIFAR10_NPZ=$npz PYTHONUNBUFFERED=1
summary=$out/summary.md

pack() { tar czf "$out/logs.tgz" -C "$logs" . 2>/dev/null; }
left() { echo $((budget - SECONDS)); }
step() {  # name, cap seconds, command...: run it under min(cap, time left), log, time it
  local name=$1 cap=$2 start=$SECONDS limit rc var; shift 2
  var=CAP_${name^^}
  cap=${!var:-$cap}
  limit=$(($(left) < cap ? $(left) : cap))
  if ((limit < 10)); then echo "- $name: skipped, budget spent" | tee -a "$summary"; return 1; fi
  echo "== $name (limit ${limit} s): $*"
  timeout --kill-after=20 "$limit" "$@" >"$logs/$name.log" 2>&1
  rc=$?
  echo "- $name: exit $rc, $((SECONDS - start)) s wall$( ((rc == 124)) && echo ' (stopped at its time limit)'): \`$*\`" |
    tee -a "$summary"
  tail -n 3 "$logs/$name.log"
  pack
  return $rc
}
report() {  # experiment, sweep (latest|none), title
  { echo; echo "### $3"; echo; "$py" benchmarks/gpu_report.py --experiment "$1" --sweep "$2" --store-dir "$store" \
      --json "$logs/$1.json" 2>&1; echo; } >>"$summary"
}
newest() { find "$1" -name "$2" -newer "$logs/start" 2>/dev/null | tail -n 1; }

touch "$logs/start"
{ echo "# GPU benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"; echo
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
  echo "budget ${budget} s"; echo; } | tee "$summary"

# 1. The baseline's sweep, exactly as a user runs it.
step sweep 330 "$py" train.py -m optimizer.lr=1e-2,9.33e-3 "${ov[@]}"
report cifar10 latest "1. python train.py -m optimizer.lr=1e-2,9.33e-3"
cp "$(newest outputs comparison.png)" "$out/sweep-comparison.png" 2>/dev/null
step explain 60 "$py" explain.py output_dir="$logs/explain" tracking.store_dir="$store" &&
  cp "$logs/explain/misclassified_grid.png" "$out/explain_grid.png" &&
  cp "$logs/explain/confusion_matrix.png" "$out/explain_confusion.png"

# 2. The fast recipe.
step fast 110 "$py" train.py experiment=fast tracking.experiment=fast "${ov[@]}"
report fast none "2. python train.py experiment=fast"

# 3. The LR range test.
step find_lr 80 "$py" find_lr.py "${ov[@]}" "${lr_ov[@]}"
{ echo; echo "### 3. python find_lr.py"; echo; grep -iE "suggest|python train.py -m" "$logs/find_lr.log"; } >>"$summary"
cp "$(newest outputs lr_finder_summary.png)" "$out/lr_finder.png" 2>/dev/null

# 4. Options, in the time left.
step compile 100 "$py" train.py experiment=fast trainer.compile=true trainer.epochs=4 \
  tracking.experiment=options "${ov[@]}"
step deterministic 50 "$py" train.py experiment=fast trainer.deterministic=true trainer.epochs=3 \
  tracking.experiment=options "${ov[@]}"
report options none "4. trainer.compile=true / trainer.deterministic=true (fast recipe; compare with 2.)"
step joblib 200 "$py" train.py -m optimizer.lr=1e-2,9.33e-3 hydra/launcher=joblib hydra.launcher.n_jobs=2 \
  trainer.epochs="${JOBLIB_EPOCHS:-10}" tracking.experiment=joblib "${ov[@]}"
report joblib latest "4. the two-lr sweep, both jobs at once (joblib, n_jobs=2, ${JOBLIB_EPOCHS:-10} epochs)"

pack
echo "total $SECONDS s" | tee -a "$summary"
echo "results in $out"
