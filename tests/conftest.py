"""Fixtures and hooks of the suite; the helpers the tests import live in support.py."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
from hypothesis import settings

from support import _shared, mlflow_client, where, write_npz

# Property-based tests: a few dozen examples each by default (CI); HYPOTHESIS_PROFILE=thorough for a
# thousand (minutes), e.g. before a release or after changing a config group.
settings.register_profile("ci", max_examples=30, deadline=None)
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One thread, as in the entry points tests start (OMP_NUM_THREADS=1): runs in this process and in
    subprocesses compute the same numbers, and two xdist workers do not thrash two cores. (A fixture,
    not pytest_configure: the xdist controller runs no test and need not import torch.)"""
    import torch

    torch.set_num_threads(1)


# Seconds each test file takes on the 2-core development machine (measured 2026-11-27): (whole suite,
# in-process tier `-m "not slow"`). xdist hands out whole files (--dist loadfile, in collection order:
# --no-loadscope-reorder); the heaviest first lets both workers finish together. A file not listed
# goes last; a rough figure is enough.
FILE_SECONDS = {
    "test_scale_out.py": (145, 5.5),  # 2026-12-04: scaled from the files' times beside each other
    "test_sweeper.py": (105, 21),
    "test_explain.py": (54, 0),  # builds sweeps.registry_sweeps, which test_registry.py reads much later
    "test_browser.py": (39, 0),
    "test_reproduce.py": (34, 0),
    "test_resume.py": (24, 0),
    "test_chain.py": (20, 0),
    "test_find_lr.py": (18, 4.6),
    "test_secrets.py": (18, 0),
    "test_seeds.py": (18, 4),  # builds sweeps.seeded_sweep, which test_browser.py reads too
    "test_load.py": (17, 0),
    "test_train.py": (13, 6.2),
    "test_signals.py": (12, 0),
    "test_report.py": (12, 0),
    "test_registry.py": (25, 0),
    "test_config.py": (10, 8.6),
    "test_image_folder.py": (9, 9),
    "test_bench.py": (9, 0),
    "test_redact.py": (8, 6.7),
    "test_inputs.py": (35, 35),
    "test_docs.py": (7, 7),  # added 2026-12-04, measured on a loaded machine: a rough figure
    "test_models.py": (4, 5.6),
    "test_logged_model.py": (8, 8),
    "test_core.py": (3, 3),
    "test_store.py": (2, 2),
    "test_placement.py": (20, 12),
    "test_cuda_graph.py": (8, 8),
}


def pytest_collection_modifyitems(config, items):
    tier = 1 if "not slow" in (config.option.markexpr or "") else 0
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.name, (0, 0))[tier])  # stable: files stay whole


def pytest_unconfigure(config):
    """pytest ends a session with five full garbage collections (to surface exceptions raised in
    finalizers): about 0.3 s each in a process that holds torch, MLflow and pandas, at the end of
    every xdist worker. Objects alive now are frozen: those collections, and the interpreter's at
    exit (fast_exit/sitecustomize.py), skip them."""
    gc.freeze()


@pytest.fixture(autouse=True)
def isolated_mlflow(monkeypatch):
    """No test inherits a store or a data file from the environment or from another test."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SWEEPLAB_CIFAR10_NPZ", raising=False)


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory) -> Path:
    return write_npz(tmp_path_factory.mktemp("data") / "tiny.npz")


@pytest.fixture(scope="session", autouse=True)
def shared_root(tmp_path_factory) -> Path:
    """A folder of this test session that every xdist worker sees (each worker's base temp is one level
    below it): for what the session computes once, whichever worker needs it first (under a file lock)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared"
    root.mkdir(exist_ok=True)
    _shared[:] = [root]
    return root


@pytest.fixture
def workdir(tmp_path, tiny_npz) -> dict:
    """Overrides that keep a run's store, outputs and checkpoints inside the test's temp folder."""
    return {"tmp": tmp_path, "store": tmp_path / "mlruns", "overrides": where(tmp_path, tiny_npz)}


@pytest.fixture(scope="module")
def store(request, tmp_path_factory, tiny_npz) -> dict:
    """One store, outputs and checkpoints folder for a test module's runs: ``where`` (the overrides that
    point a run there), ``tmp`` and ``client`` (an MlflowClient of the store)."""
    tmp = tmp_path_factory.mktemp(request.module.__name__.removeprefix("test_"))
    return {"tmp": tmp, "where": where(tmp, tiny_npz), "client": mlflow_client(tmp / "mlruns")}
