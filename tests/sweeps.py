"""Tiny sweeps, each run once per test session by whichever test process needs it first (a file lock
in the session's shared folder, conftest.shared_root), then read by any test file on any xdist worker.

Each sweep runs the real ``train.py -m`` in-process (apps.run_app). Sweeps that belong together share
one store and run in order under one lock (``registry_sweeps``)."""

from __future__ import annotations

import json
from pathlib import Path

from apps import Result, run_app
from support import TINY, locked, mlflow_client, new_store, session_folder

# Fewer images than TINY's default: most sweeps are needed for their runs, not for what they learn.
SMALL = [o for o in TINY if not o.startswith(("data.train_limit", "data.test_limit"))] + [
    "data.train_limit=100",
    "data.test_limit=100",
]


def _run(folder: Path, name: str, npz: Path, overrides: tuple[str, ...], base: list[str]) -> dict:
    """``train.py -m <overrides>`` into ``folder``'s store (created on first use); cached on disk by name."""
    done = folder / f"{name}.json"
    if not done.exists():
        if not (folder / "mlruns" / "mlflow.db").exists():
            new_store(folder / "mlruns")
        mine = {o.split("=")[0] for o in overrides}
        result = run_app(
            "train.py",
            "-m",
            *overrides,
            *[o for o in base if o.split("=")[0] not in mine],
            f"tracking.store_dir={folder / 'mlruns'}",
            f"paths.log_dir={folder / name}",
            f"paths.checkpoint_dir={folder / 'ck'}",
            f"data.npz={npz}",
        )
        done.write_text(json.dumps(result._asdict()))
    client = mlflow_client(folder / "mlruns")
    return {
        "result": Result(**json.loads(done.read_text())),
        "store": folder / "mlruns",
        "tmp": folder,
        "client": client,
        "experiment": client.get_experiment_by_name("cifar10"),
        "sweep_dirs": sorted((folder / name / "train" / "multiruns").glob("*")),
    }


def sweep_store(name: str) -> Path:
    """The store that ``run_sweep(npz, name, ...)`` logs to, created (empty) if the sweep has not run yet."""
    root = session_folder()
    with locked(root / f"{name}.lock"):
        return new_store(root / name / "mlruns")


def run_sweep(npz: Path, name: str, *overrides: str) -> dict:
    """A sweep in a store of its own."""
    root = session_folder()
    with locked(root / f"{name}.lock"):
        return _run(root / name, name, npz, overrides, SMALL)


def two_run_sweep(tiny_npz) -> dict:
    """A finished 2-run lr sweep of 2 epochs each."""
    return run_sweep(
        tiny_npz,
        "two_runs",
        "optimizer.lr=0.05,0.02",
        "trainer.epochs=2",
        "tracking.system_metrics_interval=0.5",
    )


def seeded_sweep(tiny_npz) -> dict:
    """A finished 2 x 2 sweep: two learning rates, each with seeds 1 and 2 (``seeds=2``), 2 epochs on
    the whole tiny data set (so that the two learning rates learn differently)."""
    return run_sweep(
        tiny_npz,
        "seeded",
        "optimizer.lr=0.05,0.005",
        "seeds=2",
        "trainer.epochs=2",
        "tracking.system_metrics=false",
        "data.train_limit=null",
        "data.test_limit=null",
    )


def failed_sweep(tiny_npz) -> dict:
    """lr=1e6 drives the training loss to NaN within the epoch's 10 steps: that job's run ends FAILED,
    and the job after it (lr 0.05) still runs: a sweep goes on past a failed job."""
    return run_sweep(tiny_npz, "one_failed", "optimizer.lr=1e6,0.05", "trainer.epochs=1", "trainer.batch_size=10")


def registry_sweeps(tiny_npz) -> dict:
    """Three sweeps in one store, in order: ``first`` (one job, one epoch) registers version 1 and
    gets @best; ``worse`` (one job at a far too low lr) registers version 2 and leaves @best where it
    is; ``better`` (1 and 3 epochs on the whole tiny data set) registers its 3-epoch run as version 3
    and moves @best to it. explain.py's tests use ``better``, the latest sweep, whose two runs differ
    clearly."""
    root = session_folder()
    with locked(root / "registry.lock"):
        folder = root / "registry"
        plan = {
            "first": (("optimizer.lr=0.05", "trainer.epochs=1"), TINY),
            "worse": (("optimizer.lr=1e-7", "trainer.epochs=1"), SMALL),
            "better": (("optimizer.lr=0.05", "trainer.epochs=1,3"), TINY),
        }
        return {name: _run(folder, name, tiny_npz, overrides, base) for name, (overrides, base) in plan.items()}
