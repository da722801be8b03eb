"""benchmarks/bench.py runs end to end and prints every figure. Sizes are tiny, so the figures
mean nothing here (docs/benchmarks.md holds measured ones); what is checked is that each section
runs and reports what it measured."""

from __future__ import annotations

import re

import pytest

from conftest import TINY, run_entry


@pytest.mark.slow
def test_benchmark_prints_each_comparison_and_each_recipe(tiny_npz):
    done = run_entry(
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
