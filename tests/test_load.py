"""benchmarks/load.py at toy size: concurrent jobs log runs with nothing lost, and the table is printed.
The figures themselves are docs/benchmarks.md's business; this only keeps the benchmark working."""

from __future__ import annotations

import re

import pytest

from apps import run_app

pytestmark = pytest.mark.slow  # forks jobs; the PostgreSQL case starts a database and an `mlflow server`


def _load(*args: str):
    """``python benchmarks/load.py <args>``, its parent in this process (its jobs are processes anyway)."""
    return run_app("benchmarks/load.py", *args)


def _rows(stdout: str) -> list[list[str]]:
    """The main table's rows (backend ... log calls), as cells."""
    rows = []
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 11 and cells[0] in ("sqlite", "postgres") and re.fullmatch(r"\d+/\d+", cells[3]):
            rows.append(cells)
    return rows


def _check(result, backend: str, modes: list[str], n: int, epochs: int):
    out = result.stdout
    tail = (out + result.stderr)[-4000:]  # the tables and, on failure, the errors the benchmark lists
    assert result.returncode == 0, tail
    assert "| backend | mode | N | runs FINISHED | errors | metric points logged | lost |" in out, tail
    assert "OK: no errors, nothing lost" in out, tail
    rows = [r for r in _rows(out) if r[0] == backend]
    assert [r[1] for r in rows] == modes, tail
    for r in rows:
        assert r[2] == str(n) and r[3] == f"{n}/{n}", tail  # every run FINISHED
        assert r[4] == "0" and r[6] == "0" and r[7] == "0 / 0", tail  # no errors; nothing lost
        assert r[5] == f"{n * (epochs * 10 + 4):,}", tail  # 10 metrics per epoch and 4 at the end, per job
        assert re.fullmatch(r"[\d.]+ / [\d.]+", r[9]) and re.fullmatch(r"[\d.]+ / [\d.]+", r[10]), tail
    # The per-call table names every call type.
    assert "| setup | start | params | tags | epoch | fit_end | artifact | end |" in out, tail


def test_load_benchmark_at_small_n():
    """Two jobs logging the way sweeplab does (in the background) to the default SQLite store. The
    PostgreSQL server and larger N are the benchmark's, not the suite's (docs/benchmarks.md, "Load")."""
    result = _load("--n", "2", "--epochs", "3", "--epoch-seconds", "0", "--backends", "sqlite", "--modes", "async")
    _check(result, "sqlite", ["async"], 2, 3)


def test_load_benchmark_fails_loudly_on_bad_options():
    result = _load("--backends", "oracle")
    assert result.returncode == 2 and "unknown backend 'oracle'" in result.stderr


def _new_store_job(index: int, store: str, errors) -> None:
    """One job of the test below, in a process of its own."""
    from omegaconf import OmegaConf

    from sweeplab import tracking

    try:
        experiment_id = tracking.setup(OmegaConf.create({"uri": None, "store_dir": store, "experiment": "new"}))
        with tracking.open_run(experiment_id, f"job{index}"):
            for epoch in (1, 2):
                tracking.log_metrics({"test_acc": 0.5, "train_loss": 1.0}, step=epoch)
    except Exception as err:
        errors.put(f"job{index}: {type(err).__name__}: {err}")


def test_four_processes_create_one_new_store_at_once(tmp_path):
    """Four jobs start on a store that does not exist yet: MLflow must create and migrate its tables
    once (sweeplab.tracking does it under a file lock), and every job's run and metrics land. The
    processes fork from a server that imported sweeplab once, so they start together, in milliseconds."""
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["sweeplab.tracking"])
    errors = ctx.Queue()
    store = tmp_path / "mlruns"
    procs = [ctx.Process(target=_new_store_job, args=(i, str(store), errors)) for i in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
    messages = [errors.get() for _ in range(errors.qsize())] if not errors.empty() else []
    assert [p.exitcode for p in procs] == [0, 0, 0, 0] and not messages, messages
    from support import mlflow_client

    client = mlflow_client(store)
    runs = client.search_runs([client.get_experiment_by_name("new").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["job0", "job1", "job2", "job3"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "test_acc")] == [1, 2]


def test_a_dataset_a_parallel_job_inserted_first_is_linked_again(tmp_path, monkeypatch):
    """Two jobs of a sweep on a PostgreSQL-backed server log the same data set at once: the server
    refuses the second insert (duplicate key, HTTP 400; seen in CI's submitit test). The job links
    the dataset again instead of failing."""
    import numpy as np
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient
    from omegaconf import OmegaConf

    from sweeplab import tracking

    from support import new_store

    new_store(tmp_path)
    experiment_id = tracking.setup(OmegaConf.create({"uri": None, "store_dir": str(tmp_path), "experiment": "race"}))
    real, calls = tracking.provenance.mlflow.log_input, []

    def refused_once(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise MlflowException('BAD_REQUEST: duplicate key value violates unique constraint "dataset_pk"')
        return real(*args, **kwargs)

    monkeypatch.setattr(tracking.provenance.mlflow, "log_input", refused_once)
    images, labels = np.zeros((4, 2, 2, 3), np.uint8), np.arange(4)
    data = tracking.DataInput("tiny-training", "training", images, labels, "ab" * 32, str(tmp_path / "x.npz"))
    with tracking.open_run(experiment_id, "racer") as run_id:
        tracking.log_dataset(data)
    inputs = MlflowClient().get_run(run_id).inputs.dataset_inputs
    assert len(calls) == 2 and [d.dataset.name for d in inputs] == ["tiny-training"]

    def refused(*args, **kwargs):
        raise MlflowException("RESOURCE_DOES_NOT_EXIST: no run")

    monkeypatch.setattr(tracking.provenance.mlflow, "log_input", refused)  # any other refusal still fails the job
    with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST"), tracking.open_run(experiment_id, "other"):
        tracking.log_dataset(data)
