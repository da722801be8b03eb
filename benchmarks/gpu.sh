#!/usr/bin/env bash
# Every GPU figure of docs/benchmarks.md in one command, logs kept in one folder:
#
#   bash benchmarks/gpu.sh path/to/cifar10.npz [log folder [overrides...]]
#
# 1. benchmarks/bench.py: (1)-(3) with the full ResNet-18, then (4) the baseline (50 epochs) and fast
#    (30 epochs) recipes: train images/s, seconds per epoch, training time to 88%, best accuracy.
# 2. The baseline's two-lr sweep as a user runs it (jobs one after the other), timed wall to wall;
#    with JOBLIB=1 also both jobs at once on the one GPU (hydra/launcher=joblib, n_jobs=2).
# Logs go to outputs/benchmarks/<time> by default, the sweeps to the default MLflow store (mlruns/).
# Hydra overrides after the log folder apply to (4) and to the sweeps (the tests use tiny ones).
# At the targets' speed, about 6 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
npz=$(realpath "${1:?usage: bash benchmarks/gpu.sh path/to/cifar10.npz [log folder [overrides...]]}")
out=${2:-outputs/benchmarks/$(date +%Y%m%d-%H%M%S)}
shift $(($# < 2 ? $# : 2))
mkdir -p "$out"
export SWEEPLAB_CIFAR10_NPZ=$npz PYTHONUNBUFFERED=1

{ date -u
  if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; fi
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'threads', torch.get_num_threads())"
} | tee "$out/machine.txt"

python benchmarks/bench.py --npz "$npz" --recipes baseline,fast --override "$@" 2>&1 | tee "$out/bench.log"

sweep() {  # name, extra overrides...
  local name=$1 start=$SECONDS; shift
  python train.py -m optimizer.lr=1e-2,9.33e-3 "$@" 2>&1 | tee "$out/sweep-$name.log"
  echo "two-lr sweep ($name): $((SECONDS - start)) s wall" | tee -a "$out/summary.txt"
}
sweep sequential "$@"
if [[ ${JOBLIB:-0} == 1 ]]; then sweep joblib-2 hydra/launcher=joblib hydra.launcher.n_jobs=2 "$@"; fi
grep -h "^(" "$out/bench.log" | tee -a "$out/summary.txt"
echo "logs in $out"
