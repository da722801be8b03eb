"""benchmarks/bench.py runs end to end and prints every figure. Sizes are tiny, so the figures
mean nothing here (docs/benchmarks.md holds measured ones); what is checked is that each section
runs and reports what it measured."""

from __future__ import annotations

import re

import pytest

from apps import run_app
from support import ROOT, TINY


@pytest.mark.slow
def test_benchmark_prints_each_comparison_and_each_recipe(tiny_npz):
    done = run_app(
        "benchmarks/bench.py",
        "--npz",
        str(tiny_npz),
        "--images",
        "100",
        "--steps",
        "2",
        "--rounds",
        "2",
        "--width",
        "4",
        "--epochs",
        "1",
        "--recipes",
        "baseline,fast",
        "--max-epochs",
        "2",
        "--override",
        *TINY,
        "target_acc=0.2",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    ratios = [float(x) for x in re.findall(r"-> (?:overhead )?([\d.]+)x", out)]
    assert len(ratios) == 4 and all(r > 0 for r in ratios), out  # (3) has a side-by-side and a direct one
    assert re.search(r"^\(1\) data path: on-device [\d,]+ img/s vs DataLoader\+PIL [\d,]+ img/s", out, re.M)
    assert re.search(
        r"^\(3\) MLflow logging: 1 epochs with it [\d.]+ s vs without [\d.]+ s .*; directly: "
        r"[\d.]+ ms per epoch .* and [\d.]+ ms per fit",
        out,
        re.M,
    )
    # Both recipes as train.py composes them (their own epoch counts), cut to 2 epochs; the tiny
    # data set is learnable, so each reaches the 20% target and says when.
    for recipe, epochs in (("baseline", 50), ("fast", 30)):
        line = re.search(rf"^\(4\) {recipe}: 2 of {epochs} epochs, [\d,]+ train img/s, [\d.]+ s/epoch .*$", out, re.M)
        assert line, out
        assert re.search(r"20% at epoch [12] after [\d.]+ s of training", line.group(0)), line.group(0)


@pytest.mark.slow
def test_peer_benchmark_trains_both_sides_and_prints_their_ratio(tiny_npz):
    """benchmarks/peer.py at toy size: the torchvision DataLoader + PIL loop and sweeplab's engine, each
    epoch in turn, each side's seconds per epoch, images/s and test accuracy, and the ratio."""
    args = ["--npz", str(tiny_npz), "--device", "cpu", "--images", "256", "--test-images", "100"]
    done = run_app("benchmarks/peer.py", *args, "--width", "4", "--epochs", "2", "--workers", "0")
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "256 training images, ResNet-18 width 4, batch 128" in out, out
    for side in (r"peer \(torchvision CIFAR10, DataLoader with PIL transforms", r"sweeplab \(experiment=baseline"):
        line = re.search(
            rf"^{side}.*: ([\d.]+) s/epoch, ([\d,]+) img/s \(epochs: [\d.]+ [\d.]+ s\); "
            rf"test accuracy ([\d.]+)%$",
            out,
            re.M,
        )
        assert line and float(line.group(1)) > 0 and 0 <= float(line.group(3)) <= 100, out
    assert "precision fp32, channels_last False, CUDA graph off" in out  # sweeplab's CPU defaults
    ratio = re.search(
        r"^ratio: sweeplab [\d,]+ img/s vs peer [\d,]+ img/s, .* -> ([\d.]+)x the peer's speed$", out, re.M
    )
    assert ratio and float(ratio.group(1)) > 0, out


def _gpu_report():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_report", ROOT / "benchmarks" / "gpu_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_report_finds_the_first_epoch_at_each_target_and_the_training_seconds_to_it():
    from sweeplab.tracking import Run

    report = _gpu_report()
    accs, times = [0.5, 0.89, 0.87, 0.95, 0.94], [5.0, 2.0, 2.0, 2.0, 2.0]
    history = [
        {"epoch": i + 1, "test_acc": a, "epoch_time": t, "eval_time": 0.1, "images_per_sec": 50000 / t}
        for i, (a, t) in enumerate(zip(accs, times, strict=True))
    ]
    run = Run("abc123", "optimizer.lr=0.01", "1", "FINISHED", 1_000, 31_000, {"optimizer.lr": "0.01"})
    row = report.figures(run, history, [0.88, 0.94, 0.99])
    assert (row["epoch_to_88"], row["train_s_to_88"]) == (2, 7.0)
    assert (row["epoch_to_94"], row["train_s_to_94"]) == (4, 11.0)
    assert row["epoch_to_99"] is None and row["train_s_to_99"] is None
    assert (row["best_acc"], row["best_epoch"]) == (0.95, 4)
    assert row["s_per_epoch"] == 13.0 / 5 and row["s_per_epoch_after_first"] == 2.0
    assert row["images_per_s"] == 25000 and row["wall_s"] == 30.0 and row["train_s"] == 13.0
    table = report.markdown([row], [0.88, 0.94, 0.99])
    assert "| optimizer.lr=0.01 | FINISHED | 5 | 95.00% (4) | 2, 7.0 | 4, 11.0 | -, - |" in table
    assert "50.00 89.00 87.00 95.00 94.00" in table
