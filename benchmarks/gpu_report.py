"""The figures of docs/benchmarks.md's GPU section, read back from the MLflow store.

    python benchmarks/gpu_report.py --experiment cifar10              # the latest sweep's runs
    python benchmarks/gpu_report.py --experiment fast --sweep none    # every run of an experiment
    python benchmarks/gpu_report.py --experiment cifar10 --json out.json --targets 0.88,0.94

Per run: best test accuracy and its epoch, the first epoch (and the training seconds up to it) that
reaches each target accuracy, training seconds per epoch (mean of all epochs and of all but the first,
which holds warm-up and compilation), evaluation seconds per epoch, training images/s (median), the
run's wall time (start to end, everything included), the most GPU memory it held (``max_memory_gib``),
the device it trained on, how many steps replayed the CUDA graph, and the test accuracy of every epoch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from omegaconf import OmegaConf

from sweeplab import tracking

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("test_acc", "epoch_time", "eval_time", "images_per_sec", "lr")


def figures(run: tracking.Run, history: list[dict], targets: list[float]) -> dict:
    epochs = [h for h in history if "test_acc" in h]
    train_s = [h["epoch_time"] for h in epochs if "epoch_time" in h]
    eval_s = [h["eval_time"] for h in epochs if "eval_time" in h]
    out = {
        "run": run.name,
        "run_id": run.run_id,
        "status": run.status,
        "lr": run.params.get("optimizer.lr"),
        "epochs": len(epochs),
        "wall_s": run.wall_time_s,
        "train_s": sum(train_s),
        "s_per_epoch": statistics.mean(train_s) if train_s else None,
        "s_per_epoch_after_first": statistics.mean(train_s[1:]) if len(train_s) > 1 else None,
        "eval_s_per_epoch": statistics.mean(eval_s) if eval_s else None,
        "images_per_s": statistics.median(h["images_per_sec"] for h in epochs) if epochs else None,
        "test_acc": [round(h["test_acc"], 4) for h in epochs],
        "device": run.tags.get("sweeplab.device"),
        "max_memory_gib": run.metrics.get("max_memory_gib"),
        "cuda_graph_replays": run.metrics.get("cuda_graph_replays"),
    }
    if epochs:
        best = max(epochs, key=lambda h: (h["test_acc"], -h["epoch"]))
        out["best_acc"], out["best_epoch"] = best["test_acc"], best["epoch"]
    for target in targets:
        hit = next((h for h in epochs if h["test_acc"] >= target), None)
        key = f"{round(100 * target)}"
        out[f"epoch_to_{key}"] = hit["epoch"] if hit else None
        out[f"train_s_to_{key}"] = (
            sum(h.get("epoch_time", 0) for h in epochs if h["epoch"] <= hit["epoch"]) if hit else None
        )
    return out


def fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def markdown(rows: list[dict], targets: list[float]) -> str:
    keys = [f"{round(100 * t)}" for t in targets]
    head = ["run", "status", "epochs", "best acc (epoch)"]
    head += [f"{k}%: epoch, train s" for k in keys]
    head += ["train s/epoch (after 1st)", "eval s/epoch", "train img/s", "wall s", "GPU GiB (peak)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["run"], r["status"], str(r["epochs"])]
        cells.append(f"{100 * r['best_acc']:.2f}% ({r['best_epoch']})" if "best_acc" in r else "-")
        cells += [f"{fmt(r[f'epoch_to_{k}'], 'd')}, {fmt(r[f'train_s_to_{k}'])}" for k in keys]
        cells.append(f"{fmt(r['s_per_epoch'], '.2f')} ({fmt(r['s_per_epoch_after_first'], '.2f')})")
        cells += [fmt(r["eval_s_per_epoch"], ".2f"), fmt(r["images_per_s"], ",.0f"), fmt(r["wall_s"])]
        cells.append(fmt(r.get("max_memory_gib"), ".2f"))
        lines.append("| " + " | ".join(cells) + " |")
    for r in rows:
        accs = " ".join(f"{100 * a:.2f}" for a in r["test_acc"])
        on = f" on {r['device']}" if r.get("device") else ""
        if r.get("cuda_graph_replays") is not None:
            on += f", {r['cuda_graph_replays']:,.0f} steps from the CUDA graph"
        lines.append(f"\n{r['run']} ({r['run_id'][:8]}{on}), test accuracy % per epoch: {accs}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="cifar10")
    parser.add_argument("--sweep", default="latest", help="latest | a sweep id | none (every run of the experiment)")
    parser.add_argument("--store-dir", default=str(ROOT / "mlruns"))
    parser.add_argument("--targets", default="0.88,0.94")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    targets = [float(t) for t in args.targets.split(",")]

    cfg = OmegaConf.create({"uri": None, "store_dir": args.store_dir, "experiment": args.experiment})
    experiment_id = tracking.find_experiment(cfg)
    if experiment_id is None:
        print(f"error: no experiment {args.experiment!r} in {tracking.tracking_uri()}", file=sys.stderr)
        return 2
    sweep = tracking.latest_sweep(experiment_id) if args.sweep == "latest" else args.sweep
    runs = tracking.sweep_runs(experiment_id, sweep) if sweep and sweep != "none" else tracking.all_runs(experiment_id)
    runs = [r for r in runs if r.tags.get(tracking.KIND_TAG) is None]  # jobs only: no sweep parents, no reports
    rows = [figures(r, tracking.metric_history(r.run_id, KEYS), targets) for r in runs]
    print(f"experiment {args.experiment}, sweep {sweep or 'none'}: {len(rows)} runs")
    print(markdown(rows, targets))
    if args.json:
        Path(args.json).write_text(json.dumps({"experiment": args.experiment, "sweep": sweep, "runs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
