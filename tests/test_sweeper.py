"""Sweeps as Optuna studies (sweeplab.sweeper, sweeplab.study): losing jobs pruned, grids and searches
continued after an interruption, early stopping of a single run, bad input refused before any job,
the study served by optuna-dashboard. In-process through train.py where a subprocess proves nothing
more; the launchers' parallel jobs and two sweepers sharing a study: test_scale_out.py."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from hydra import initialize_config_dir

from apps import run_app
from pause import pause_overrides
from support import ROOT, TINY, entry_env, epoch_metrics, free_port, mlflow_client, run_entry, where
from sweeps import failed_sweep

# Three epochs on the 500 tiny images: lr 0.05 and 0.02 learn, lr 1e-7 cannot.
RUN = [*TINY, "trainer.epochs=3", "tracking.system_metrics=false"]
SHORT = [*TINY, "trainer.epochs=2", "trainer.checkpoint_every=2", "data.train_limit=100", "data.test_limit=50"]
SHORT += ["tracking.system_metrics=false"]


def compose_train(*overrides: str):
    """train.py's config as a multirun composes it (sweep overrides allowed), Hydra's node included."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        return loader.load_configuration("train", list(overrides), run_mode=RunMode.MULTIRUN)


def runs_of(store: Path):
    client = mlflow_client(store)
    exp = client.get_experiment_by_name("cifar10")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]) if exp else []
    parents = [r for r in runs if r.data.tags.get("sweeplab.kind") == "sweep"]
    return client, parents, [r for r in runs if r not in parents]


def study_of(store: Path, name: str | None = None) -> optuna.Study:
    storage = f"sqlite:///{store / 'optuna.db'}"
    names = optuna.study.get_all_study_names(storage)
    return optuna.load_study(study_name=name or names[-1], storage=storage)


# -- the config becomes a study -------------------------------------------------------------------
def test_hydra_sweep_syntax_becomes_optunas_distributions():
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from sweeplab import study

    cfg = compose_train("hparams_search=optuna_lr", "trainer.batch_size=choice(50,100)")
    plan = study.settings(cfg)
    assert plan.kind == study.SEARCH and plan.direction == "maximize" and plan.n_trials == 20
    assert plan.space["optimizer.lr"] == FloatDistribution(1e-4, 1e-1, log=True)
    assert plan.space["trainer.batch_size"] == CategoricalDistribution(["50", "100"])  # the command line's
    assert isinstance(plan.sampler, optuna.samplers.TPESampler)
    assert isinstance(plan.pruner, optuna.pruners.MedianPruner)  # the search's default
    job = plan.overrides({"optimizer.lr": 0.01, "optimizer.weight_decay": 1e-5, "trainer.batch_size": "50"})
    assert job == [
        "optimizer.lr=0.01",
        "optimizer.weight_decay=1e-05",
        "trainer.batch_size=50",
        "hparams_search=optuna_lr",
    ]
    assert plan.storage_url == f"sqlite:///{ROOT / 'mlruns' / 'optuna.db'}"  # beside the MLflow store
    # The same search, wherever and however it runs, is the same study; another search is another.
    elsewhere = study.settings(
        compose_train(
            "hparams_search=optuna_lr",
            "trainer.batch_size=choice(50,100)",
            "hydra.sweeper.n_trials=99",
            "hydra/launcher=joblib",
            "prune=none",
            "tracking.store_dir=/elsewhere",
        )
    )
    assert elsewhere.study_name == plan.study_name and plan.study_name.startswith("cifar10-")
    assert isinstance(elsewhere.pruner, optuna.pruners.NopPruner) and elsewhere.slots > 1
    other = study.settings(compose_train("hparams_search=optuna_lr", "trainer.epochs=3"))
    assert other.study_name != plan.study_name


def test_a_grid_is_every_combination_in_the_commands_order():
    from sweeplab import study

    plan = study.settings(compose_train("optimizer.lr=0.1,0.01", "+seed_like=a,b", "trainer.epochs=2"))
    assert plan.kind == study.GRID and plan.study_name is None  # a grid gets its own study per sweep
    assert plan.grid == [
        {"optimizer.lr": "0.1", "+seed_like": "a"},
        {"optimizer.lr": "0.1", "+seed_like": "b"},
        {"optimizer.lr": "0.01", "+seed_like": "a"},
        {"optimizer.lr": "0.01", "+seed_like": "b"},
    ]
    assert plan.overrides(plan.grid[1]) == ["optimizer.lr=0.1", "+seed_like=b", "trainer.epochs=2"]
    assert plan.swept == ["optimizer.lr", "seed_like"] and plan.direction == "maximize"
    assert study.settings(compose_train("optimizer.lr=0.1,0.01", "objective=test_loss")).direction == "minimize"


def test_jobs_in_flight_follow_the_launcher():
    from omegaconf import OmegaConf

    from sweeplab.study import slots

    basic = OmegaConf.create({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"})
    assert slots(None, basic) == 1 and slots(4, basic) == 1  # the basic launcher runs jobs in this thread
    joblib = OmegaConf.create({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"})
    three = OmegaConf.merge(joblib, {"n_jobs": 3})
    assert slots(None, three) == 3 and slots(2, three) == 2
    submitit = OmegaConf.create({"_target_": "x.SlurmLauncher", "array_parallelism": 16})
    assert slots(None, submitit) == 16


@pytest.mark.parametrize(
    "overrides,first",
    [
        (["optimizer.lr=0.1,0.01", "prune=median"], "optimizer.lr=0.1"),
        (["hparams_search=optuna_lr", "hydra.sweeper.sampler.seed=3"], "optimizer.lr=0.0"),
    ],
)
def test_without_its_study_the_sweeper_only_hands_the_launcher_its_first_job(overrides, first, tmp_path):
    """What a rehearsal of the sweeper's settings sees (its settings built, the first job handed to the
    launcher), and why a run without the sweep callback stops with one error instead of running a study."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins
    from hydra.types import HydraContext, RunMode
    from omegaconf import open_dict

    class FirstBatch(BaseException):
        pass

    batches = []

    def launch(job_overrides, initial_job_idx):
        batches.append((list(job_overrides[0]), initial_job_idx))
        raise FirstBatch

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        cfg = loader.load_configuration("train", [*overrides, f"tracking.store_dir={tmp_path}"], RunMode.MULTIRUN)
        with open_dict(cfg):
            cfg.hydra.sweep.dir = str(tmp_path / "sweep")
        sweeper = Plugins.instance().instantiate_sweeper(
            config=cfg, hydra_context=HydraContext(config_loader=loader, callbacks=None), task_function=print
        )
        sweeper.impl.launcher.launch = launch
        with pytest.raises(FirstBatch):
            sweeper.sweep(arguments=list(cfg.hydra.overrides.task))
    ((job, number),) = batches
    assert number == 0 and job[0].startswith(first), job


def test_optunas_internals_that_jobs_use(tmp_path):
    """Optuna hands a Trial only to the process that asked for it; a job builds its own from the
    trial's number (sweeplab.study.trial_of, storage_id). This fails loudly when an upgrade changes them."""
    from sweeplab import study

    storage = study.open_storage(f"sqlite:///{tmp_path / 'o.db'}", 60)
    asker = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    asked = study.ask(asker, {"x": optuna.distributions.FloatDistribution(0, 1)})
    job_side = study.load("s", storage, optuna.pruners.NopPruner())
    trial, trial_id = study.trial_of(job_side, asked.number)
    assert trial_id == study.storage_id(asked) and isinstance(trial_id, int)
    trial.report(0.5, 1)
    assert asker.trials[0].intermediate_values == {1: 0.5} and trial.params == asked.params


def test_a_stale_trial_is_failed_and_queued_again_with_its_run(tmp_path):
    """A trial whose process died (no heartbeat for two intervals) is failed and queued again with its
    values and its MLflow run, which the retry resumes; it is counted once toward n_trials."""
    from sweeplab import study

    storage = study.open_storage(f"sqlite:///{tmp_path / 'o.db'}", 1)
    s = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask(s, {"x": optuna.distributions.FloatDistribution(0, 1)})
    trial.set_user_attr(study.RUN_ATTR, "run-1")
    storage.record_heartbeat(study.storage_id(trial))
    time.sleep(3.2)  # two intervals and more, at the database's one-second resolution (SQLite)
    study.fail_stale(s)
    failed, retry = s.get_trials(deepcopy=False)
    assert failed.state == optuna.trial.TrialState.FAIL and retry.state == optuna.trial.TrialState.WAITING
    assert retry.params == failed.params and retry.user_attrs[study.RUN_ATTR] == "run-1"
    assert study.counted(s.get_trials(deepcopy=False)) == 1


def test_the_objective_so_far():
    from sweeplab.study import objective_so_far

    history = [{"test_acc": 0.3, "test_loss": 2.0}, {"test_acc": 0.2, "test_loss": 1.5}]
    assert objective_so_far(history, "best_test_acc") == 0.3  # what the job returns if it ends here
    assert objective_so_far(history, "test_loss") == 1.5


# -- bad input: one line, exit 2, before any job and any MLflow run --------------------------------
def _precreated(workdir) -> list[str]:
    """A study 'taken' in the test's store, made to minimize."""
    storage = f"sqlite:///{workdir['store'] / 'optuna.db'}"
    optuna.create_study(study_name="taken", storage=storage, direction="minimize")
    return ["hparams_search=optuna_lr", "hydra.sweeper.study_name=taken"]


GRID = ["optimizer.lr=0.1,0.2"]
SEARCH = ["hparams_search=optuna_lr"]
BAD = {
    "pruner": ([*GRID, "prune=median", "prune._target_=optuna.pruners.NoSuchPruner"], "error: prune: "),
    "pruner-value": ([*GRID, "prune=median", "prune.n_warmup_steps=-1"], "error: prune: "),
    "not-a-pruner": ([*GRID, "prune=median", "prune._target_=collections.OrderedDict"], "not an Optuna pruner"),
    "sampler": ([*SEARCH, "hydra.sweeper.sampler._target_=optuna.samplers.Nope"], "hydra.sweeper.sampler: "),
    "direction": ([*SEARCH, "hydra.sweeper.direction=up"], "hydra.sweeper.direction='up'"),
    "n_trials": ([*SEARCH, "hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0"),
    "storage-dir": ([*GRID, "hydra.sweeper.storage=sqlite:////nonexistent/dir/o.db"], "cannot be used"),
    "storage-server": ([*GRID, "hydra.sweeper.storage=postgresql://u:hush@127.0.0.1:{port}/o"], "cannot be used"),
    "storage-file": ([*GRID, "hydra.sweeper.storage=sqlite:///{tmp}/notes.txt"], "cannot be used"),
    "stored-direction": (_precreated, "was made to minimize, and this command asks to maximize"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_sweep_input_stops_before_any_job_and_any_run(workdir, case):
    overrides, message = BAD[case]
    (workdir["tmp"] / "notes.txt").write_text("not a database\n")
    if callable(overrides):
        overrides = overrides(workdir)
    overrides = [o.format(port=free_port(), tmp=workdir["tmp"]) for o in overrides]
    result = run_app("train.py", "-m", *overrides, *workdir["overrides"], *TINY, "trainer.epochs=1")
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr[-3000:]
    assert "hush" not in result.stderr + result.stdout  # a storage password never shows
    _, parents, runs = runs_of(workdir["store"])
    assert not parents and not runs, "no MLflow run exists"
    assert "Launching" not in result.stdout + result.stderr and not (workdir["tmp"] / "checkpoints").exists()


def test_a_storage_password_is_masked_in_a_jobs_logs():
    """A job's own config has no Hydra node: the study storage's password (a Hydra key) is found in
    Hydra's config of the job, and masked in everything the job logs and uploads."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from sweeplab import tracking
    from sweeplab.tracking.secrets import clean

    cfg = compose_train("optimizer.lr=0.1,0.2", "hydra.sweeper.storage=postgresql://u:Sekr3t-pw9@db/optuna")
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    HydraConfig.instance().set_config(cfg)
    try:
        assert "Sekr3t-pw9" in clean("a line that quotes Sekr3t-pw9")  # not known yet
        tracking.protect(task)
        assert clean("a line that quotes Sekr3t-pw9") == "a line that quotes ***"
    finally:
        HydraConfig.instance().cfg = None


# -- a grid prunes its loser ----------------------------------------------------------------------
def own_store(tmp_path_factory, tiny_npz, name: str) -> dict:
    tmp = tmp_path_factory.mktemp(name)
    return {"tmp": tmp, "where": where(tmp, tiny_npz)}


@pytest.fixture(scope="module")
def pruned_grid(tmp_path_factory, tiny_npz):
    store = own_store(tmp_path_factory, tiny_npz, "pruned")
    result = run_app(
        "train.py",
        "-m",
        "optimizer.lr=0.05,0.02,1e-7",
        "prune=median",
        *store["where"],
        *RUN,
        "trainer.checkpoint_every=3",  # a stop after epoch 2 writes its checkpoint itself
    )
    return store, result, *runs_of(store["tmp"] / "mlruns")


@pytest.mark.slow
def test_a_grid_with_prune_median_stops_the_job_that_cannot_learn(pruned_grid):
    store, result, client, (parent,), runs = pruned_grid
    assert result.returncode == 0, result.stderr[-3000:]  # a pruned job is not a failure
    by_lr = {r.data.params["optimizer.lr"]: r for r in runs}
    loser = by_lr["1e-07"]
    assert loser.info.status == "KILLED" and loser.data.tags["sweeplab.pruned_at_epoch"] == "2"  # after its warm-up
    assert "sweeplab.failure" not in loser.data.tags
    assert sorted(m.step for m in client.get_metric_history(loser.info.run_id, "test_acc")) == [1, 2]
    assert {by_lr["0.05"].info.status, by_lr["0.02"].info.status} == {"FINISHED"}
    metrics = parent.data.metrics
    assert (metrics["sweep.jobs"], metrics["sweep.jobs_finished"], metrics["sweep.jobs_pruned"]) == (3, 2, 1)
    assert metrics["sweep.jobs_failed"] == 0 and parent.info.status == "FINISHED"
    # Never the best: the registered version is another job's.
    version = client.get_model_version_by_alias("cifar10-resnet18", "best")
    assert version.run_id != loser.info.run_id and parent.data.tags["sweeplab.sweep.best_run"] != loser.info.run_id
    # The report says so, in its table and its figure's legend.
    table = Path(client.download_artifacts(parent.info.run_id, "report/comparison.md", str(store["tmp"])))
    assert "| **PRUNED** |" in table.read_text() and "pruned after epoch 2" in table.read_text()
    # The study's figures and table are on the parent.
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "optuna")}
    assert {"optuna/trials.csv", "optuna/intermediate_values.png", "optuna/optimization_history.png"} <= names
    assert metrics["optuna.trials_pruned"] == 1


@pytest.mark.slow
def test_a_pruned_run_keeps_its_checkpoint_and_resumes_to_its_end(pruned_grid):
    store, _, client, _, runs = pruned_grid
    (loser,) = [r for r in runs if r.data.params["optimizer.lr"] == "1e-07"]
    assert (store["tmp"] / "checkpoints" / loser.info.run_id / "last.pt").is_file()
    result = run_app("train.py", f"resume={loser.info.run_id}", *store["where"])
    assert result.returncode == 0, result.stderr[-3000:]
    run = client.get_run(loser.info.run_id)
    assert run.info.status == "FINISHED" and "sweeplab.pruned_at_epoch" not in run.data.tags
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "test_acc")) == [1, 2, 3]


# -- stopped sweeps continue ----------------------------------------------------------------------
@pytest.mark.slow
def test_a_grid_stopped_in_its_second_job_continues_where_it_stopped(workdir):
    """SIGTERM after the second job's first epoch (pause.py: the run signals itself there): that run is
    KILLED, the parent KILLED, exit 143. The same command again keeps the first job, resumes the second
    in its own run, runs the third, all under the one parent."""
    # Three jobs that differ only in when the pause would stop them: the second after epoch 1.
    command = ["-m", *pause_overrides("99,1,98", workdir["tmp"] / "paused", "SIGTERM"), *workdir["overrides"], *SHORT]
    first = run_app("train.py", *command)
    assert first.returncode == 143, first.stderr[-3000:]
    client, (parent,), runs = runs_of(workdir["store"])
    assert parent.info.status == "KILLED" and [r.info.status for r in runs] == ["FINISHED", "KILLED"]
    done, stopped = runs
    before = epoch_metrics(client, done.info.run_id)

    second = run_app("train.py", *command)
    assert second.returncode == 0, second.stderr[-3000:]
    client, (again,), runs = runs_of(workdir["store"])
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"  # one parent
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    by_epoch = {r.data.params["trainer.callbacks.pause.epoch"]: r for r in runs}
    assert by_epoch["99"].info.run_id == done.info.run_id and epoch_metrics(client, done.info.run_id) == before
    assert client.get_run(done.info.run_id).info.end_time == done.info.end_time  # not trained again
    resumed = by_epoch["1"]
    assert resumed.info.run_id == stopped.info.run_id and resumed.data.tags["sweeplab.resumed_from_epoch"] == "1"
    assert sorted(m.step for m in client.get_metric_history(resumed.info.run_id, "test_acc")) == [1, 2]
    assert again.data.metrics["sweep.jobs"] == 3 and again.data.metrics["sweep.jobs_finished"] == 3

    third = run_app("train.py", *command)  # a finished grid run again is a new sweep
    assert third.returncode == 143, third.stderr[-3000:]  # (its second job pauses again)
    _, parents, _ = runs_of(workdir["store"])
    assert len(parents) == 2


@pytest.mark.slow
def test_a_grid_whose_sweeper_was_killed_continues_once_the_killed_trial_is_silent(workdir):
    """kill -9 in the second job, which the basic launcher runs in the sweeper's own process: nothing
    ends the runs or tells the study. The same command continues the sweep; the killed trial sends no
    heartbeat (hydra.sweeper.heartbeat_s=1 here: stale after 2 s), so it is failed and queued again,
    and its job resumes the killed run from its checkpoint."""
    run = [o for o in SHORT if not o.startswith("trainer.checkpoint_every")] + ["trainer.checkpoint_every=1"]
    command = ["-m", *pause_overrides("99,1,98", workdir["tmp"] / "paused", "SIGKILL"), *workdir["overrides"], *run]
    first = run_entry("train.py", *command)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    _, (parent,), runs = runs_of(workdir["store"])
    assert parent.info.status == "RUNNING" and [r.info.status for r in runs] == ["FINISHED", "RUNNING"]
    killed = runs[1].info.run_id

    second = run_app("train.py", *command, "hydra.sweeper.heartbeat_s=1")
    assert second.returncode == 0, second.stderr[-3000:]
    client, (again,), runs = runs_of(workdir["store"])
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    resumed = client.get_run(killed)
    assert resumed.data.tags["sweeplab.resumed_from_epoch"] == "1"
    assert sorted(m.step for m in client.get_metric_history(killed, "test_acc")) == [1, 2]
    states = [t.state.name for t in study_of(workdir["store"]).trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]  # the killed trial, and its retry last


@pytest.fixture(scope="module")
def search(tmp_path_factory, tiny_npz):
    """A 3-trial search stopped by SIGTERM in its second trial (trial 1), then the same command again."""
    store = own_store(tmp_path_factory, tiny_npz, "search")
    command = [
        "-m",
        "hparams_search=optuna_lr",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.n_startup_trials=2",
        "trainer.batch_size=choice(50,100)",
        *pause_overrides(1, store["tmp"] / "paused", "SIGTERM", job=1),
        *store["where"],
        *[o for o in SHORT if not o.startswith("trainer.batch_size")],
    ]
    first = run_app("train.py", *command)
    trials = [(t.number, t.state.name) for t in study_of(store["tmp"] / "mlruns").trials]
    second = run_app("train.py", *command)
    return store, first, trials, second


@pytest.mark.slow
def test_a_search_stopped_part_way_continues_without_rerunning_its_trials(search):
    store, first, trials_then, second = search
    assert first.returncode == 143, first.stderr[-3000:]
    assert trials_then == [(0, "COMPLETE"), (1, "FAIL"), (2, "WAITING")]  # trial 1 queued again
    assert second.returncode == 0, second.stderr[-3000:]
    s = study_of(store["tmp"] / "mlruns")
    states = [(t.number, t.state.name) for t in s.trials]
    assert states == [(0, "COMPLETE"), (1, "FAIL"), (2, "COMPLETE"), (3, "COMPLETE")]  # n_trials=3 in all
    assert s.trials[2].params == s.trials[1].params  # the retry has the interrupted trial's values
    client, (parent,), runs = runs_of(store["tmp"] / "mlruns")
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    run_of = {t.number: t.user_attrs["sweeplab.run_id"] for t in s.trials}
    assert run_of[1] == run_of[2]  # the retry resumed the interrupted trial's own run
    assert client.get_run(run_of[2]).data.tags["sweeplab.resumed_from_epoch"] == "1"
    assert {r.info.run_id for r in runs} == {run_of[0], run_of[2], run_of[3]}
    # The study's result on the one parent; the best line printed.
    best = s.best_trial
    assert parent.data.metrics["optuna.best_value"] == pytest.approx(best.value)
    assert parent.data.tags["sweeplab.optuna.best_run"] == best.user_attrs["sweeplab.run_id"]
    assert parent.data.tags["best.optimizer.lr"] == str(best.params["optimizer.lr"])
    assert client.get_run(best.user_attrs["sweeplab.run_id"]).data.tags["sweeplab.optuna.best"] == "true"
    assert f"optuna: best best_test_acc = {best.value:.4f}" in second.stdout
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "optuna")}
    assert {"optuna/trials.csv", "optuna/optimization_history.png", "optuna/optimization_results.yaml"} <= names


@pytest.mark.slow
def test_optuna_dashboard_serves_the_studys_trials(search, tmp_path):
    import requests

    store = search[0]
    storage = f"sqlite:///{store['tmp'] / 'mlruns' / 'optuna.db'}"
    port = free_port()
    log = open(tmp_path / "dashboard.log", "w")  # the server's console, closed below
    proc = subprocess.Popen(
        # The README's command: the console script beside this Python (pip installs it with optuna-dashboard).
        [str(Path(sys.executable).with_name("optuna-dashboard")), storage, "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=entry_env(),
    )
    try:
        deadline, studies = time.monotonic() + 120, None
        while studies is None:
            assert proc.poll() is None, (tmp_path / "dashboard.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "optuna-dashboard did not answer"
            try:
                studies = requests.get(f"http://127.0.0.1:{port}/api/studies", timeout=5).json()["study_summaries"]
            except requests.RequestException:
                time.sleep(0.25)
        (summary,) = studies
        assert summary["study_name"] == study_of(store["tmp"] / "mlruns").study_name
        detail = requests.get(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}", timeout=10).json()
        trials = detail["trials"]
        assert [t["state"] for t in trials] == ["Complete", "Fail", "Complete", "Complete"]
        attrs = [{a["key"]: a["value"] for a in t["user_attrs"]} for t in trials]
        _, _, runs = runs_of(store["tmp"] / "mlruns")
        assert {a["sweeplab.run_id"] for a in attrs} == {r.info.run_id for r in runs}  # each trial names its run
        # Reported every epoch (the interrupted trial 1 was stopped before it reported its first).
        assert [[v["step"] for v in t["intermediate_values"]] for t in trials] == [[1, 2], [], [1, 2], [1, 2]]
    finally:
        proc.kill()
        proc.wait(timeout=10)
        log.close()


@pytest.mark.slow
def test_a_job_whose_loss_became_nan_is_a_failed_trial_and_the_sweep_goes_on(tiny_npz):
    """Optuna takes a NaN objective as a failed trial (sweeps.failed_sweep: lr=1e6, then 0.05)."""
    sweep = failed_sweep(tiny_npz)
    assert [t.state.name for t in study_of(sweep["store"]).trials] == ["FAIL", "COMPLETE"]
    assert sweep["result"].returncode == 1  # the failed job is the command's exit code


def test_the_sweep_file_names_the_study(tmp_path):
    """Jobs find their study through the sweep folder (sweeplab.job), where any launcher's processes look."""
    from sweeplab import job

    job.write_sweep(tmp_path, id="s1", parent_run_id="p1", swept=["optimizer.lr"], study="cifar10-grid-s1")
    assert json.loads((tmp_path / job.SWEEP_FILE).read_text())["study"] == "cifar10-grid-s1"
    assert job.sweep(tmp_path)["study"] == "cifar10-grid-s1"


def test_a_sweep_can_be_a_new_stores_first_use(tmp_path, tiny_npz):
    """tracking.store_dir names a folder that does not exist yet: the sweep makes it, its study
    file beside the MLflow store, and runs (the study storage is opened before MLflow's first write)."""
    store = tmp_path / "new" / "mlruns"
    overrides = [*where(tmp_path, tiny_npz, store=False)[1:], f"tracking.store_dir={store}"]
    result = run_app("train.py", "-m", "optimizer.lr=0.05,0.02", *SHORT, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (store / "optuna.db").is_file() and (store / "mlflow.db").is_file()
    _, parents, runs = runs_of(store)
    assert len(parents) == 1 and [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
