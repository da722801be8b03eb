"""The tests' helpers: the tiny data set, private MLflow stores (copies of one migrated template per
session), the session's shared folder, and the environment and runner for entry points started as
processes. conftest.py holds only fixtures and hooks."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
# The test session's processes exit without seconds of final garbage collection (fast_exit/sitecustomize.py):
# the xdist workers, started after this import, and every process a test starts inherit the path.
FAST_EXIT = ROOT / "tests" / "fast_exit"
if str(FAST_EXIT) not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FAST_EXIT), os.environ.get("PYTHONPATH")]))
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# A model small enough that an epoch over the tiny data set takes about a second on one core.
TINY = [
    "model=resnet18_narrow",
    "model.width=4",
    "trainer.batch_size=50",
    "trainer.eval_batch_size=500",
    "trainer.device=cpu",
    "data.train_limit=null",
    "data.test_limit=null",
]


def make_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Class k: a bright square at a class-specific place and colour on noise, so a tiny CNN learns it."""
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 90, size=(n, 32, 32, 3), dtype=np.uint8)
    for i, k in enumerate(labels):
        r, c = 4 + 6 * (k // 4), 4 + 7 * (k % 4)
        images[i, r : r + 8, c : c + 8, k % 3] = 250
    return images, labels.astype(np.int64)


def write_npz(path: Path, n_train: int = 500, n_test: int = 200, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    tr_x, tr_y = make_images(n_train, rng)
    te_x, te_y = make_images(n_test, rng)
    np.savez(path, train_images=tr_x, train_labels=tr_y, test_images=te_x, test_labels=te_y, classes=np.array(CLASSES))
    return path


# The session's folder that every xdist worker sees (set by conftest's shared_root fixture): for what the
# session computes once, whichever worker needs it first (under a file lock).
_shared: list[Path] = []


def session_folder() -> Path:
    return _shared[0]


def locked(path: Path) -> FileLock:
    """An exclusive lock on ``path`` (a lock file), across the session's processes."""
    return FileLock(path)


def new_store(folder: Path) -> Path:
    """``folder`` holding an MLflow SQLite store; a new one is empty and migrated to the current schema, a copy of one
    template per test session (MLflow takes seconds to create and migrate a store; a copy, milliseconds)."""
    template = _shared[0] / "store-template" / "mlflow.db"
    with locked(_shared[0] / "store-template.lock"):
        if not template.exists():
            from mlflow.tracking import MlflowClient

            building = template.with_name("building.db")
            MlflowClient(tracking_uri=f"sqlite:///{building}").search_experiments()  # creates the tables
            building.rename(template)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "mlflow.db").exists():  # an existing store is kept as it is
        shutil.copyfile(template, folder / "mlflow.db")
    return folder


def where(tmp: Path, npz: Path, store: bool = True) -> list[str]:
    """Overrides that keep a run's store (a fresh copy; none with ``store=False``, for a run that logs
    to a server), outputs and checkpoints inside ``tmp``."""
    if store:
        new_store(tmp / "mlruns")
    return [
        f"tracking.store_dir={tmp / 'mlruns'}",
        f"paths.log_dir={tmp / 'outputs'}",
        f"paths.checkpoint_dir={tmp / 'checkpoints'}",
        f"data.npz={npz}",
    ]


def child_pythonpath() -> str:
    """PYTHONPATH for a process a test starts: the tests' helpers (pause.py, ...), fast_exit, and what
    the suite itself was given (a checkout's src/ ahead of an installed sweeplab)."""
    paths = [str(ROOT / "tests"), str(FAST_EXIT), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    return os.pathsep.join(dict.fromkeys(p for p in paths if p))


def entry_env(**extra: str) -> dict:
    """The environment for an entry point: no inherited store or data, one thread per process
    (tiny models gain nothing from more, and parallel jobs must not oversubscribe 2 cores)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "SWEEPLAB_CIFAR10_NPZ")}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONPATH=child_pythonpath(), **extra)
    return env


def run_entry(script: str, *args: str, env: dict | None = None, timeout: int = 300, cwd=None):
    """Run ``python <script> args...`` from another working directory, as a user would."""
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=entry_env(**(env or {})),
        cwd=cwd or ROOT.parent,
    )


EPOCH_METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "lr")


def epoch_metrics(client, run_id: str) -> dict[str, list[float]]:
    """A run's per-epoch metrics, each in epoch order; one value per epoch (a resumed or requeued run
    must not log an epoch twice)."""
    out = {}
    for key in EPOCH_METRICS:
        history = client.get_metric_history(run_id, key)
        steps = [m.step for m in history]
        assert len(steps) == len(set(steps)), f"{key} logged twice for one epoch"
        out[key] = [m.value for m in sorted(history, key=lambda m: m.step)]
    return out


def mlflow_client(store: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(proc: subprocess.Popen, timeout: float = 15) -> None:
    """Stop a test's server started in its own session (``start_new_session=True``) with all it spawned:
    SIGKILL at once (nothing of a test server's state is wanted afterwards; uvicorn's workers take
    seconds to finish on SIGTERM)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=timeout)
