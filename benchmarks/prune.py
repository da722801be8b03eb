"""Pruning, measured: a grid of 8 learning rates log-spaced across find_lr's range (1e-3 .. 1) on the
real CIFAR-10 on the CPU, trained by the real entry point once without and once with `prune=median`,
in one run of this script. Prints, side by side, the epochs each job trained, what each sweep
trained in all and how long it took, and whether both found the same best; writes the figures as
JSON for docs/benchmarks.md ("Pruning").

    python benchmarks/prune.py --npz /path/to/cifar10.npz            # about 30 minutes on 2 busy cores
    python benchmarks/prune.py --npz /path/to/cifar10.npz --epochs 3 --train-limit 500   # a quick look

The median rule compares a job with the jobs that finished before it, so the order of the grid
matters: `--order descending` (the default) writes it from the top of find_lr's range down,
`--order ascending` from the bottom up; `--order both` runs the pruned sweep in each order.
Each sweep has a store of its own in --out (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# A small model on a few thousand images, the baseline's recipe otherwise (SGD momentum 0.9, batch 128,
# ReduceLROnPlateau, the baseline's augmentation): about 20 s an epoch on 2 busy CPU cores.
RECIPE = ["model=resnet18_narrow", "model.width=8", "trainer.device=cpu", "tracking.system_metrics=false"]


def grid(order: str) -> list[str]:
    """The 8 learning rates, 3 significant digits, as the command line writes them."""
    lrs = [f"{lr:.3g}" for lr in np.logspace(-3, 0, 8)]
    return lrs[::-1] if order == "descending" else lrs


def sweep(name: str, lrs: list[str], prune: str, args, out: Path) -> dict:
    """``train.py -m optimizer.lr=<lrs> prune=<prune>`` into a store of its own; its jobs as MLflow has them."""
    folder = out / name
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        f"optimizer.lr={','.join(lrs)}",
        f"prune={prune}",
        *RECIPE,
        f"data.npz={args.npz}",
        f"data.train_limit={args.train_limit}",
        f"data.test_limit={args.test_limit}",
        f"trainer.epochs={args.epochs}",
        f"tracking.store_dir={folder / 'mlruns'}",
        f"paths.log_dir={folder / 'outputs'}",
        f"paths.checkpoint_dir={folder / 'checkpoints'}",
    ]
    print(f"{name}: {' '.join(command[3:5])}", flush=True)
    start = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{name}: train.py exited {done.returncode}; see {out / (name + '.log')}")

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cifar10").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("sweeplab.kind") == "sweep"]
    jobs = {}
    for run in runs:
        if run is parent:
            continue
        jobs[run.data.params["optimizer.lr"]] = {
            "epochs": len(client.get_metric_history(run.info.run_id, "test_acc")),
            "best_test_acc": run.data.metrics.get("best_test_acc"),
            "status": run.info.status,
            "pruned_at": run.data.tags.get("sweeplab.pruned_at_epoch"),
        }
    best = client.get_run(parent.data.tags["sweeplab.sweep.best_run"])
    return {
        "prune": prune,
        "order": lrs,
        "seconds": seconds,
        "epochs": sum(j["epochs"] for j in jobs.values()),
        "jobs": jobs,
        "best_lr": best.data.params["optimizer.lr"],
        "best_test_acc": parent.data.metrics["sweep.best_value"],
        "pruned": int(parent.data.metrics.get("sweep.jobs_pruned", 0)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--npz", default=os.environ.get("SWEEPLAB_CIFAR10_NPZ"), help="CIFAR-10 in the npz layout")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-limit", type=int, default=2000)
    parser.add_argument("--test-limit", type=int, default=1000)
    parser.add_argument("--order", choices=("descending", "ascending", "both"), default="descending")
    parser.add_argument("--out", type=Path, default=None, help="stores, logs and prune.json (default: a temp folder)")
    args = parser.parse_args()
    if not args.npz:
        parser.error("--npz (or SWEEPLAB_CIFAR10_NPZ) is needed: the real CIFAR-10 in the npz layout")
    out = args.out or Path(tempfile.mkdtemp(prefix="sweeplab-prune-"))
    out.mkdir(parents=True, exist_ok=True)

    orders = ["descending", "ascending"] if args.order == "both" else [args.order]
    results = {"none": sweep("none", grid(orders[0]), "none", args, out)}
    for order in orders:
        results[f"median-{order}"] = sweep(f"median-{order}", grid(order), "median", args, out)
    settings = {k: str(v) for k, v in vars(args).items()}
    (out / "prune.json").write_text(json.dumps({"args": settings, **results}, indent=1))

    names = list(results)
    print(f"\n{args.epochs} epochs, {args.train_limit} training images, {args.test_limit} test images; in {out}")
    print(f"{'lr':>8} " + " ".join(f"{n:>24}" for n in names))
    for lr in grid("descending"):
        cells = []
        for name in names:
            job = results[name]["jobs"][lr]
            stopped = f" (pruned at {job['pruned_at']})" if job["pruned_at"] else ""
            cells.append(f"{job['epochs']:>2} ep {100 * job['best_test_acc']:5.1f}%{stopped}")
        print(f"{lr:>8} " + " ".join(f"{c:>24}" for c in cells))
    base = results["none"]
    for name in names:
        r = results[name]
        same = r["best_lr"] == base["best_lr"] and r["best_test_acc"] == base["best_test_acc"]
        print(
            f"{name:>16}: {r['epochs']:3d} epochs ({r['epochs'] / base['epochs']:.2f}x), {r['seconds']:6.0f} s "
            f"({r['seconds'] / base['seconds']:.2f}x), {r['pruned']} pruned; best lr {r['best_lr']} "
            f"{100 * r['best_test_acc']:.2f}%" + ("" if name == "none" else f" (same best: {same})")
        )


if __name__ == "__main__":
    main()
