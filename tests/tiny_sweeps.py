"""Tiny sweeps run once per test session and shared by test_train.py, test_report.py and test_browser.py
(pytest would run a fixture imported into two modules twice; this cache runs each sweep once)."""

from __future__ import annotations

from pathlib import Path

from conftest import TINY, mlflow_client, run_entry

# Fewer images than TINY's default: the report and browser tests need runs, not learning.
SMALL = [o for o in TINY if not o.startswith(("data.train_limit", "data.test_limit"))] + [
    "data.train_limit=100",
    "data.test_limit=100",
]
_cache: dict[str, dict] = {}


def run_sweep(name: str, root: Path, npz: Path, *overrides: str) -> dict:
    """``train.py -m <overrides>`` into a private store under ``root/name``; cached by name."""
    if name not in _cache:
        tmp = root / name
        store = tmp / "mlruns"
        mine = {o.split("=")[0] for o in overrides}
        base = [o for o in SMALL if o.split("=")[0] not in mine]
        result = run_entry(
            "train.py",
            "-m",
            *overrides,
            *base,
            f"tracking.store_dir={store}",
            f"paths.log_dir={tmp / 'outputs'}",
            f"paths.checkpoint_dir={tmp / 'ck'}",
            f"data.npz={npz}",
        )
        client = mlflow_client(store)
        experiment = client.get_experiment_by_name("cifar10")
        _cache[name] = {
            "result": result,
            "store": store,
            "tmp": tmp,
            "client": client,
            "experiment": experiment,
            "sweep_dirs": sorted((tmp / "outputs" / "train" / "multiruns").glob("*")),
        }
    return _cache[name]


def two_run_sweep(tmp_path_factory, tiny_npz) -> dict:
    """A finished 2-run lr sweep of 2 epochs each."""
    return run_sweep("two_runs", tmp_path_factory.getbasetemp(), tiny_npz, "optimizer.lr=0.05,0.02", "trainer.epochs=2")
