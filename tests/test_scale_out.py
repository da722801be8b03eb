"""Scale-out: Hydra launchers (submitit_local, joblib), the study sweeper with parallel jobs and with
two sweepers sharing one study, and a real `mlflow server` with proxied artifacts, backed by
PostgreSQL as a team would run it.

PostgreSQL and the server (servers.py) are started once for the module and always stopped; where
PostgreSQL cannot be started a SQLite-backed server stands in (and the shared-study test skips),
unless SWEEPLAB_REQUIRE_POSTGRES=1 makes that a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import NamedTuple

import pytest

from apps import run_app
from gate import gate_overrides
from pause import pause_overrides
from servers import mlflow_server, start_postgres
from support import (
    ROOT,
    TINY,
    child_pythonpath,
    entry_env,
    epoch_metrics,
    free_port,
    mlflow_client,
    where,
)

ONE_EPOCH = [*TINY, "trainer.epochs=1", "trainer.checkpoint_every=0"]


class Server(NamedTuple):
    uri: str
    folder: Path

    @property
    def artifacts(self) -> Path:
        """Where the server stores what clients upload (servers.mlflow_server's layout)."""
        return self.folder / "artifacts"


@pytest.fixture(scope="module")
def postgres():
    """A private PostgreSQL cluster's URI (its database ``mlflow``), or the reason there is none; a
    failure instead with SWEEPLAB_REQUIRE_POSTGRES=1."""
    try:
        uri, stop = start_postgres()
    except RuntimeError as err:
        if os.environ.get("SWEEPLAB_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL could not be started: {err}")
        yield f"PostgreSQL could not be started ({err})"
        return
    try:
        yield uri
    finally:
        stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory, postgres):
    """The team's setup: an `mlflow server` backed by PostgreSQL, with proxied artifacts (in
    ``folder/artifacts``). Where PostgreSQL cannot be started, a SQLite-backed server stands in (and
    the reason is printed)."""
    base = tmp_path_factory.mktemp("servers")
    with ExitStack() as stack:
        backend = postgres
        if not postgres.startswith("postgresql://"):
            print(f"{postgres}: a SQLite-backed server instead")
            backend = f"sqlite:///{base / 'mlflow.db'}"
        folder = base / "server"
        uri = stack.enter_context(mlflow_server(backend, folder))
        yield Server(uri, folder)


def _client(server: Server):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=server.uri)


def _runs(server: Server, experiment: str):
    client = _client(server)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment} on {server.uri}"
    return exp, client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def _check_sweep(server: Server, experiment: str, result, n: int, lrs: list[str], epochs: int = 1):
    """One parent run with n FINISHED children (nested, though each job ran in a process of its own),
    per-epoch metrics, and artifacts the server holds itself; the comparison on the parent."""
    assert result.returncode == 0, result.stderr[-3000:]
    exp, runs = _runs(server, experiment)
    assert exp.artifact_location.startswith("mlflow-artifacts:"), exp.artifact_location  # proxied
    (parent,) = [r for r in runs if r.data.tags.get("sweeplab.kind") == "sweep"]
    runs = [r for r in runs if r is not parent]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert len(runs) == n and {r.info.status for r in runs} == {"FINISHED"} and parent.info.status == "FINISHED"
    assert {r.data.tags["sweeplab.sweep"] for r in runs} == {parent.data.tags["sweeplab.sweep"]}
    assert sorted(r.data.params["optimizer.lr"] for r in runs) == sorted(lrs)
    client = _client(server)
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "test_acc")
        assert sorted(m.step for m in history) == list(range(1, epochs + 1))
        assert "best_test_acc" in run.data.metrics and "train_loss" in run.data.metrics
        names = {a.path for a in client.list_artifacts(run.info.run_id, "config")}
        assert {"config/config.yaml", "config/resolved.yaml", "config/overrides.txt"} <= names
        assert client.list_artifacts(run.info.run_id, "plots"), "the curves figure was uploaded"
        # Downloaded through the server, and stored in the server's folder, not the job's.
        local = client.download_artifacts(run.info.run_id, "config/overrides.txt", str(server.folder / "dl"))
        assert f"optimizer.lr={run.data.params['optimizer.lr']}" in Path(local).read_text()
    stored = {p.name for p in server.artifacts.rglob("*") if p.is_file()}
    assert {"config.yaml", "overrides.txt", "curves.png"} <= stored
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {"report/comparison.csv"}


# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_submitit_local_sweep_logs_to_a_server_and_a_requeued_job_resumes_its_run(server, workdir, monkeypatch):
    """Two jobs, each in a process of its own, that differ only in when a pause (pause.py) would stop
    them: the first gets the signal submitit uses for a timeout (SIGUSR2) right after epoch 1 (its
    checkpoints come every 2 epochs: the interrupt writes epoch 1's); submitit checkpoints and requeues
    it, and the rerun in its own folder finds the run it started and resumes it to the end. The second
    never pauses: the requeued run must log exactly its metrics."""
    experiment = "submitit"
    monkeypatch.setenv("PYTHONPATH", child_pythonpath())  # the jobs' processes import pause.py ...
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # ... and compute on one thread each, the same numbers
    run = [*TINY, "trainer.epochs=2", "trainer.checkpoint_every=2", "data.train_limit=100", "data.test_limit=50"]
    result = run_app(
        "train.py",
        "-m",
        "hydra/launcher=submitit_local",
        f"tracking.uri={server.uri}",
        f"tracking.experiment={experiment}",
        *workdir["overrides"],
        *run,
        "optimizer.lr=0.02",
        *pause_overrides("1,99", workdir["tmp"] / "paused", "SIGUSR2"),  # two jobs: pause epoch 1, and 99
    )
    _check_sweep(server, experiment, result, 2, ["0.02", "0.02"], epochs=2)
    local = mlflow_client(workdir["store"])
    assert not local.search_runs([e.experiment_id for e in local.search_experiments()]), "nothing in the local store"

    client = _client(server)
    _, runs = _runs(server, experiment)
    jobs = {r.data.params["trainer.callbacks.pause.epoch"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    requeued, plain = jobs["1"], jobs["99"]
    assert requeued.data.tags.get("sweeplab.resumed_from_epoch") == "1", requeued.data.tags
    assert "sweeplab.resumed_from_epoch" not in plain.data.tags
    assert epoch_metrics(client, requeued.info.run_id) == epoch_metrics(client, plain.info.run_id)


@pytest.mark.slow
def test_optuna_study_on_joblib_a_new_trial_starts_as_soon_as_one_ends(server, workdir, monkeypatch):
    """Three trials, two at a time (hydra.launcher.n_jobs=2; the sweeper keeps as many in flight), the
    jobs finding the server through MLFLOW_TRACKING_URI. Trial 1 holds after its epoch until trial 2
    has started (gate.py): trial 2 must start when trial 0 ends, while its batch-mate 1 still runs;
    with batches of two it would wait for trial 1, which waits for it, and trial 1 would fail."""
    fixed = [o for o in ONE_EPOCH if not o.startswith("trainer.batch_size=")]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", child_pythonpath())  # the jobs' processes import gate.py
    result = run_app(
        "train.py",
        "-m",
        "hparams_search=optuna_lr",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.n_startup_trials=2",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "tracking.experiment=optuna",
        *workdir["overrides"],
        *fixed,
        "trainer.batch_size=choice(50,100)",  # replaces the config's choices
        *gate_overrides(workdir["tmp"] / "started", wait=1, touch=2),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    best_line = [line for line in result.stdout.splitlines() if line.startswith("optuna: best best_test_acc = ")]
    assert len(best_line) == 1, result.stdout[-2000:]

    _, runs = _runs(server, "optuna")
    (study,) = [r for r in runs if r.data.tags.get("sweeplab.kind") == "sweep"]  # the study's outcome is on the parent
    trials = {int(r.data.tags["sweeplab.trial"]): r for r in runs if r is not study}
    assert {r.data.tags["mlflow.parentRunId"] for r in trials.values()} == {study.info.run_id}  # joblib's workers too
    assert sorted(trials) == [0, 1, 2] and {r.info.status for r in trials.values()} == {"FINISHED"}
    assert trials[2].info.start_time < trials[1].info.end_time  # no idle slot: 2 ran beside 1
    assert len({r.data.params["optimizer.lr"] for r in trials.values()}) == 3  # three different suggestions
    for r in trials.values():  # run names carry the searched values
        assert r.info.run_name.startswith("optimizer.lr="), r.info.run_name
        assert 1e-4 <= float(r.data.params["optimizer.lr"]) <= 1e-1
        assert r.data.params["trainer.batch_size"] in ("50", "100")

    assert study.info.status == "FINISHED" and study.info.run_name.startswith("sweep ")
    best = max(trials.values(), key=lambda r: r.data.metrics["best_test_acc"])
    assert study.data.metrics["optuna.best_value"] == pytest.approx(best.data.metrics["best_test_acc"])
    assert {"best.optimizer.lr", "best.optimizer.weight_decay", "best.trainer.batch_size"} <= set(study.data.tags)
    best_run = study.data.tags["sweeplab.optuna.best_run"]
    assert _client(server).get_run(best_run).data.tags["sweeplab.optuna.best"] == "true"
    assert study.data.tags["best.optimizer.lr"] in best_line[0]
    names = {a.path for a in _client(server).list_artifacts(study.info.run_id, "optuna")}
    assert {"optuna/optimization_results.yaml", "optuna/trials.csv", "optuna/optimization_history.png"} <= names


@pytest.mark.slow
def test_two_sweepers_share_one_study_on_postgresql(server, postgres, workdir):
    """A team's search split over two machines: two sweeper processes with one study (PostgreSQL, its
    own database beside MLflow's) and one MLflow server. The first holds its first trial until the
    second has asked for one; together they run n_trials=4, each trial once, under one parent run."""
    if not postgres.startswith("postgresql://"):
        pytest.skip(postgres)
    import psycopg

    with psycopg.connect(postgres, autocommit=True) as db:
        db.execute("CREATE DATABASE optuna")
    storage = postgres.rsplit("/", 1)[0] + "/optuna"
    fixed = [o for o in ONE_EPOCH if not o.startswith("trainer.batch_size=")]
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "hparams_search=optuna_lr",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.study_name=shared",
        f"hydra.sweeper.storage={storage}",
        f"tracking.uri={server.uri}",
        "tracking.experiment=shared",
        *workdir["overrides"],
        *fixed,
        "trainer.batch_size=choice(50,100)",
    ]
    flag, folder = workdir["tmp"] / "second-started", workdir["tmp"]
    env = entry_env(MLFLOW_DISABLE_TELEMETRY="true")
    first = _start(folder / "sweeper1.log", [*command, *gate_overrides(flag, wait=0)], env)
    second = None
    try:
        _until(lambda: any(t.state.name == "RUNNING" for t in _trials(storage)), first)  # trial 0 runs, held
        second = _start(folder / "sweeper2.log", command, env)
        _until(lambda: len({t.user_attrs.get("sweeplab.sweeper") for t in _trials(storage)}) == 2, second)
        flag.write_text("go")  # the second sweeper has asked for a trial of its own: let the first go on
        for proc in (first, second):
            assert proc.wait(timeout=300) == 0, proc.log.read_text()[-3000:]
    finally:
        for proc in filter(None, (first, second)):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

    done = _trials(storage)
    assert [t.number for t in done] == [0, 1, 2, 3] and {t.state.name for t in done} == {"COMPLETE"}
    assert len({t.user_attrs["sweeplab.sweeper"] for t in done}) == 2  # both sweepers ran trials
    _, runs = _runs(server, "shared")
    (parent,) = [r for r in runs if r.data.tags.get("sweeplab.kind") == "sweep"]
    jobs = [r for r in runs if r is not parent]
    assert {r.info.run_id for r in jobs} == {t.user_attrs["sweeplab.run_id"] for t in done}  # one run per trial
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {parent.info.run_id}
    assert {r.info.status for r in jobs} == {"FINISHED"} and parent.info.status == "FINISHED"


def _trials(storage: str) -> list:
    import optuna

    try:
        return optuna.load_study(study_name="shared", storage=storage).trials
    except KeyError:  # not created yet
        return []


def _start(log: Path, command: list[str], env: dict) -> subprocess.Popen:
    """``command`` as a process of its own, its console in ``log`` (``proc.log``)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    proc.log = log
    return proc


def _until(condition, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the sweeper ended early: {proc.log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {proc.log.read_text()[-3000:]}"
        time.sleep(0.5)


def test_a_dead_server_fails_fast_before_any_training(tmp_path, tiny_npz):
    """The store's probe answers before MLflow's client would retry for minutes: one line, no retry."""
    dead = f"http://127.0.0.1:{free_port()}"
    result = run_app("train.py", f"tracking.uri={dead}", *where(tmp_path, tiny_npz, store=False), *ONE_EPOCH)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: MLflow server") and dead in errors[0], result.stderr
    assert "not reachable (connection refused or no route, 5 s probe)" in errors[0]
    assert "Retrying" not in result.stdout + result.stderr  # MLflow's own client never got that far
    assert "Test set:" not in result.stdout + result.stderr and not (tmp_path / "checkpoints").exists()


# ----------------------------------------------------------------------------------------------
# In-process: the probe and the shipped configs.


def test_probe_names_the_store_and_hides_the_password():
    from sweeplab.errors import ConfigError
    from sweeplab.tracking import check_reachable

    port = free_port()
    with pytest.raises(ConfigError, match=rf"MLflow server http://127.0.0.1:{port} is not reachable"):
        check_reachable(f"http://127.0.0.1:{port}")
    with pytest.raises(ConfigError, match=r"postgresql://u:\*\*\*@127.0.0.1") as err:
        check_reachable(f"postgresql://u:secret@127.0.0.1:{port}/db")
    assert "secret" not in str(err.value)
    check_reachable("sqlite:///nowhere/mlflow.db")  # local stores are not probed


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_slurm_preset_extends_the_plugin_config():
    cfg = _compose("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30")
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.timeout_min, launcher.gpus_per_task) == ("gpu", 30, 1)
    assert launcher.array_parallelism > 0 and launcher.mem_gb > 0
    plain = _compose("hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu").hydra.launcher
    assert plain.partition == "gpu" and plain.gpus_per_task is None  # the plugin's own defaults


def test_optuna_search_space_lives_in_one_config():
    cfg = _compose("hparams_search=optuna_lr")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("SweeplabSweeper") and sweeper.storage is None  # beside the MLflow store
    assert str(sweeper.direction) == "maximize" and sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert sweeper.params["optimizer.lr"].startswith("tag(log")
    assert sweeper.params["optimizer.weight_decay"].startswith("tag(log")
    assert sweeper.params["trainer.batch_size"].startswith("choice(")
    assert cfg.prune._target_ == "optuna.pruners.MedianPruner"  # losers stop early by default
    assert "sweep" in cfg.hydra.callbacks
    assert not _compose("hparams_search=optuna_lr", "prune=none").prune
