"""A real data set through data=image_folder: scikit-learn's handwritten digits (1,797 real 8x8
grayscale images, 10 classes), written out as an image folder (train/ and test/, PNG), trained with
the real entry point on the CPU, then explained with GradCAM++ by explain.py.

    python benchmarks/digits.py                       # into outputs/digits/ (a fresh store each time)
    python benchmarks/digits.py --epochs 15 --out /tmp/digits
    python benchmarks/digits.py --docs                # also copy the figures to docs/digits_explain_*.png

Prints the test accuracy, the epochs and the seconds it took (training alone, and the whole command).
Needs scikit-learn (in the dev extra: pip install -e ".[dev]").
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# The recipe: a quarter-width CIFAR ResNet-18 (0.70 M parameters) on the digits upscaled to 32x32,
# random 32x32 crops of the image padded by 2 (no flips: a mirrored digit is another shape), SGD with
# a one-cycle schedule.
RECIPE = [
    "data=image_folder",
    "data.image_size=32",
    "model=resnet18_narrow",
    "augmentation=baseline",
    "augmentation.flip=false",
    "optimizer.lr=0.05",
    "scheduler=onecycle",
    "trainer.batch_size=64",
    "trainer.device=cpu",
    "target_acc=0.98",
]


def write_folder(out: Path, test_size: float = 0.2, seed: int = 0) -> tuple[int, int]:
    """The digits as ``out/train/<digit>/<index>.png`` and ``out/test/<digit>/<index>.png`` (a stratified
    split); pixel values 0..16 scaled to 0..255. Returns the number of training and test images."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    index = np.arange(len(images))
    train, test = train_test_split(index, test_size=test_size, stratify=digits.target, random_state=seed)
    if out.exists():
        shutil.rmtree(out)
    for part, chosen in (("train", train), ("test", test)):
        for i in chosen:
            folder = out / part / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], mode="L").save(folder / f"{i:04d}.png")
    return len(train), len(test)


def by_step(client, run_id: str, key: str) -> list:
    return sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        sys.exit(f"{script} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "digits", help="working folder (emptied first)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--docs", action="store_true", help="copy the GradCAM++ figures to docs/digits_explain_*.png")
    p.add_argument("--override", nargs="*", default=[], help="more Hydra overrides for train.py")
    args = p.parse_args()
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)

    n_train, n_test = write_folder(out / "images")
    print(f"wrote {n_train} training and {n_test} test images (8x8 PNG, 10 classes) to {out / 'images'}")
    where = [
        f"tracking.store_dir={out / 'mlruns'}",
        "tracking.experiment=digits",
        "tracking.run_name=digits",
        f"paths.log_dir={out / 'outputs'}",
        f"paths.checkpoint_dir={out / 'checkpoints'}",
        f"data.cache_dir={out / 'cache'}",
    ]
    train_args = [*RECIPE, f"data.path={out / 'images'}", f"trainer.epochs={args.epochs}", *where, *args.override]
    start = time.perf_counter()
    run("train.py", *train_args)
    wall = time.perf_counter() - start

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("digits")
    (r,) = [r for r in client.search_runs([experiment.experiment_id]) if "best_test_acc" in r.data.metrics]
    metrics = r.data.metrics
    history = client.get_metric_history(r.info.run_id, "epoch_time")
    train_s = sum(m.value for m in history)
    median = statistics.median(m.value for m in history)
    speed = statistics.median(m.value for m in client.get_metric_history(r.info.run_id, "images_per_sec"))
    reached = (
        f"98% at epoch {int(metrics['epochs_to_target'])} after {metrics['train_time_to_target']:.1f} s of training"
        if "epochs_to_target" in metrics
        else "98% not reached"
    )
    print(
        f"digits: best test accuracy {100 * metrics['best_test_acc']:.2f}% (epoch {int(metrics['best_epoch'])} "
        f"of {args.epochs}); {reached}; {args.epochs} epochs: {train_s:.1f} s training (median epoch {median:.2f} s, "
        f"{speed:,.0f} train img/s), {wall:.1f} s for the whole command (run {r.info.run_id})"
    )

    explained = out / "explain"
    wrong = round((1 - metrics["best_test_acc"]) * n_test)  # no wider than the mistakes, wide enough for the title
    cols = f"cols={max(3, min(5, wrong))}"
    store, logs = where[:2], f"paths.log_dir={out / 'outputs'}"  # explain.py's own Hydra folder too
    run("explain.py", f"run_id={r.info.run_id}", *store, logs, "device=cpu", f"output_dir={explained}", cols)
    summary = json.loads((explained / "summary.json").read_text())
    print(
        f"explain: {summary['misclassified']} of {summary['test_images']} test images misclassified; "
        f"grid {explained / 'misclassified_grid.png'}"
    )
    if args.docs:
        for name, doc in (
            ("misclassified_grid", "digits_explain_grid"),
            ("misclassified_heatmaps", "digits_explain_pairs"),
        ):
            shutil.copy(explained / f"{name}.png", ROOT / "docs" / f"{doc}.png")
        print(f"copied the grid and the image/heat map pairs to {ROOT / 'docs'}/digits_explain_{{grid,pairs}}.png")
    epochs = {k: [round(m.value, 4) for m in by_step(client, r.info.run_id, k)] for k in ("epoch_time", "test_acc")}
    print(json.dumps({"run_id": r.info.run_id, "train_s": train_s, "wall_s": wall, **epochs}))


if __name__ == "__main__":
    main()
