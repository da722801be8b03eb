#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md ("GPU") in one command, in order of importance, each step
# stopped at its own time limit and the whole within a budget, so a short lease still brings back
# the most important figures:
#
#   bash benchmarks/gpu.sh path/to/cifar10.npz [out folder [budget seconds]]
#   TOY=1 bash benchmarks/gpu.sh path/to/cifar10.npz /tmp/out    # the same steps at toy size on a CPU
#
# The steps (STEPS="check graph sweep peer fast88 fast" by default, in that order):
#   check   tests/test_cuda_graph.py on the card: the captured graph trains as the eager step does
#   graph   the baseline recipe, $GRAPH_EPOCHS epochs, with trainer.cuda_graph=false and =true:
#           images/s, seconds per epoch, test accuracy of each
#   sweep   python train.py -m optimizer.lr=1e-2,9.33e-3 with both jobs at once on the card
#           (hydra/launcher=joblib hydra.launcher.n_jobs=2 trainer.jobs_per_card=2): wall time, best
#           accuracy of each
#   peer    benchmarks/peer.py: the seed's way (torchvision DataLoader + PIL, plain loop) beside
#           sweeplab, $PEER_EPOCHS epochs each: seconds per epoch, images/s, the ratio
#   fast88  python train.py experiment=fast88: the recipe built for 88% in 10 s of training
#   fast    python train.py experiment=fast trainer.epochs=$FAST_EPOCHS (the graph on, as on any CUDA run)
# and, named in STEPS only, the figures of earlier issues: explain (GradCAM++ on the sweep's best
# run), find_lr, compile (trainer.compile=true, fast recipe), deterministic.
#
# The out folder gets summary.md (every table, read back from MLflow by gpu_report.py, and the peer's
# lines), the pictures and logs.tgz (every console log), refreshed after each step. Environment:
#   TRAIN_OV="..."   Hydra overrides for every train.py / find_lr.py call
#   STORE_DIR=...    the MLflow store's folder (default mlruns/)
#   PYTHON=python3   the interpreter
#   CAP_<STEP>=s     another time limit for a step (CAP_SWEEP=300, CAP_PEER=150, ...)
#   GRAPH_EPOCHS, SWEEP_EPOCHS (default: the recipe's 50), PEER_EPOCHS, FAST_EPOCHS, PEER_OV="..."
#   TOY=1            toy sizes on the CPU: the rehearsal (the graph is then off: it needs CUDA), CAP_SCALE=3
#   CAP_SCALE=n      every step's time limit times n
set -uo pipefail
cd "$(dirname "$0")/.."
npz=$(realpath "${1:?usage: bash benchmarks/gpu.sh path/to/cifar10.npz [out folder [budget seconds]]}")
out=${2:-outputs/benchmarks/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out" && out=$(realpath "$out")
budget=${3:-560}
py=${PYTHON:-python}
store=$(realpath -m "${STORE_DIR:-mlruns}")
graph_on=true
if [[ ${TOY:-} == 1 ]]; then  # a CPU, minutes: every step's command, at a size that says nothing of speed
  : "${TRAIN_OV:=model.width=4 data.train_limit=512 data.test_limit=256 trainer.batch_size=64 trainer.device=cpu}"
  : "${GRAPH_EPOCHS:=2}" "${SWEEP_EPOCHS:=1}" "${PEER_EPOCHS:=1}" "${FAST_EPOCHS:=2}" "${FAST88_EPOCHS:=2}"
  : "${PEER_OV:=--device cpu --images 256 --test-images 128 --width 4 --workers 0}"
  : "${FIND_LR_OV:=lr_finder.num_iter=20 lr_finder.val_subset=128}"
  graph_on=auto
  : "${CAP_SCALE:=3}"  # a busy 2-core machine starts a train.py in tens of seconds
fi
read -r -a ov <<<"tracking.store_dir=$store ${TRAIN_OV:-}"
read -r -a peer_ov <<<"${PEER_OV:-}"
read -r -a lr_ov <<<"${FIND_LR_OV:-}"
epochs() { [[ -n ${1:-} ]] && echo "trainer.epochs=$1"; }  # an epochs override, or none
read -r -a sweep_epochs <<<"$(epochs "${SWEEP_EPOCHS:-}")"
read -r -a fast88_epochs <<<"$(epochs "${FAST88_EPOCHS:-}")"
logs=$(mktemp -d)
export SWEEPLAB_CIFAR10_NPZ=$npz PYTHONUNBUFFERED=1
summary=$out/summary.md

pack() { tar czf "$out/logs.tgz" -C "$logs" . 2>/dev/null; }
left() { echo $((budget - SECONDS)); }
step() {  # name, cap seconds, command...: run it under min(cap, time left), log, time it
  local name=$1 cap=$2 start=$SECONDS limit rc var; shift 2
  var=CAP_${name^^}
  cap=$((${!var:-$cap} * ${CAP_SCALE:-1}))
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
      --json "$out/$1.json" 2>&1; echo; } >>"$summary"
}
newest() { find "$1" -name "$2" -newer "$logs/start" 2>/dev/null | tail -n 1; }

touch "$logs/start"
{ echo "# GPU benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"; echo
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
  echo "budget ${budget} s${TOY:+, TOY=1 (toy sizes on the CPU: no figure means anything)}"; echo; } | tee "$summary"

for name in ${STEPS:-check graph sweep peer fast88 fast}; do
  case $name in
  check)  # a few seconds: the capture on this card, against the eager step
    step check 90 "$py" -m pytest -q -n 0 -p no:cacheprovider tests/test_cuda_graph.py
    { echo; echo "### check: tests/test_cuda_graph.py"; echo; tail -n 2 "$logs/check.log"; echo; } >>"$summary" ;;
  graph)  # 1. the baseline recipe with and without the graph
    for g in false "$graph_on"; do
      step "graph_$g" 90 "$py" train.py experiment=baseline trainer.epochs="${GRAPH_EPOCHS:-5}" trainer.cuda_graph="$g" \
        tracking.experiment=graph "${ov[@]}"
    done
    report graph none "1. the baseline recipe, ${GRAPH_EPOCHS:-5} epochs, trainer.cuda_graph=false / $graph_on" ;;
  sweep)  # 2. both jobs of the baseline's sweep at once on the card
    step sweep 240 "$py" train.py -m optimizer.lr=1e-2,9.33e-3 hydra/launcher=joblib hydra.launcher.n_jobs=2 \
      trainer.jobs_per_card=2 tracking.experiment=side_by_side "${sweep_epochs[@]}" "${ov[@]}"
    report side_by_side latest "2. python train.py -m optimizer.lr=1e-2,9.33e-3, both jobs at once (joblib, n_jobs=2)"
    cp "$(newest outputs comparison.png)" "$out/sweep-comparison.png" 2>/dev/null ;;
  peer)  # 3. the seed's way beside sweeplab's
    step peer 120 "$py" benchmarks/peer.py --npz "$npz" --epochs "${PEER_EPOCHS:-3}" "${peer_ov[@]}"
    { echo; echo "### 3. benchmarks/peer.py"; echo; grep -E "^(peer|sweeplab|ratio)" "$logs/peer.log"; echo; } >>"$summary" ;;
  fast88)  # 4. the recipe built for time to 88%
    step fast88 60 "$py" train.py experiment=fast88 tracking.experiment=fast88 "${fast88_epochs[@]}" "${ov[@]}"
    report fast88 none "4. python train.py experiment=fast88 (88% in <= 10 s of training?)" ;;
  fast)  # 4. the fast recipe with the graph, over 50 epochs
    step fast 90 "$py" train.py experiment=fast trainer.epochs="${FAST_EPOCHS:-50}" tracking.experiment=fast "${ov[@]}"
    report fast none "4. python train.py experiment=fast trainer.epochs=${FAST_EPOCHS:-50} (>= 95%?)" ;;
  explain)  # GradCAM++ on the best run of the sweep above
    step explain 60 "$py" explain.py output_dir="$logs/explain" tracking.store_dir="$store" tracking.experiment=side_by_side &&
      cp "$logs/explain/misclassified_grid.png" "$out/explain_grid.png" &&
      cp "$logs/explain/confusion_matrix.png" "$out/explain_confusion.png" ;;
  find_lr)
    step find_lr 80 "$py" find_lr.py "${ov[@]}" "${lr_ov[@]}"
    { echo; echo "### python find_lr.py"; echo; grep -iE "suggest|python train.py -m" "$logs/find_lr.log"; } >>"$summary"
    cp "$(newest outputs lr_finder_summary.png)" "$out/lr_finder.png" 2>/dev/null ;;
  compile|deterministic)
    step "$name" 100 "$py" train.py experiment=fast "trainer.$name=true" trainer.epochs=4 tracking.experiment=options "${ov[@]}"
    report options none "trainer.$name=true (fast recipe, 4 epochs)" ;;
  *) echo "unknown step $name" | tee -a "$summary" ;;
  esac
done

pack
echo "total $SECONDS s" | tee -a "$summary"
echo "results in $out"
