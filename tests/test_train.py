"""train.py end to end, in-process through its real entry point: a sweep into MLflow (one parent run,
a child per job), help, and bad input."""

import json

import pytest

from sweeplab import tracking

from apps import run_app
from support import ROOT, TINY, mlflow_client
from sweeps import two_run_sweep

EPOCHS = 2  # as sweeps.two_run_sweep trains
METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_time", "eval_time", "images_per_sec")


@pytest.fixture(scope="module")
def sweep(tiny_npz):
    """The session's shared 2-run lr sweep (sweeps.py), as train.py -m leaves it."""
    s = two_run_sweep(tiny_npz)
    assert s["result"].returncode == 0, s["result"].stderr[-3000:]
    runs = s["client"].search_runs([s["experiment"].experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweeplab.kind") == "sweep"]
    children = [r for r in runs if r not in parents]
    return s["client"], parents, children, s["tmp"]


@pytest.mark.slow
def test_sweep_is_a_parent_run_with_one_finished_child_per_value(sweep):
    client, parents, runs, _ = sweep
    git = tracking.git_state(ROOT)
    (parent,) = parents
    assert parent.info.run_name == "sweep optimizer.lr=0.05,0.02" and parent.info.status == "FINISHED"
    assert len(runs) == 2 and {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert sorted(float(r.data.params["optimizer.lr"]) for r in runs) == [0.02, 0.05]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.info.run_name for r in runs) == ["optimizer.lr=0.02", "optimizer.lr=0.05"]
    assert {r.data.tags["sweeplab.sweep"] for r in runs} == {parent.data.tags["sweeplab.sweep"]}
    for run in runs:
        for key in METRICS:
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), key
        assert 0.0 < run.data.metrics["best_test_acc"] <= 1.0
        assert run.data.metrics["best_test_acc"] == max(
            m.value for m in client.get_metric_history(run.info.run_id, "test_acc")
        )
        assert run.data.params["trainer.epochs"] == str(EPOCHS)
        assert run.data.tags["mlflow.source.git.commit"] == git["commit"]  # the checkout the run came from
        assert run.data.tags["sweeplab.git_dirty"] == str(git["dirty"])
        assert len(run.data.tags["sweeplab.data.train_sha256"]) == 64
        assert "optimizer.lr=" in run.data.tags["sweeplab.overrides"]
        assert run.data.tags["sweeplab.device"] == "cpu"  # where it trained (a card: cuda:N and its name)
    # The parent holds the outcome: the best value, which child holds it, how many jobs finished.
    best = max(r.data.metrics["best_test_acc"] for r in runs)
    assert parent.data.metrics["sweep.best_value"] == best
    holder = client.get_run(parent.data.tags["sweeplab.sweep.best_run"])
    assert holder.data.metrics["best_test_acc"] == best and holder.info.run_id in {r.info.run_id for r in runs}
    assert (parent.data.metrics["sweep.jobs_finished"], parent.data.metrics["sweep.jobs_failed"]) == (2, 0)


@pytest.mark.slow
def test_runs_carry_their_data_and_system_metrics(sweep):
    """Training and test data as MLflow dataset inputs; CPU and memory use from MLflow's monitor."""
    client, _, runs, _ = sweep
    for run in runs:
        inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
        assert set(inputs) == {"cifar10-training", "cifar10-testing"}
        train = inputs["cifar10-training"]
        sha256 = run.data.tags["sweeplab.data.train_sha256"]
        assert train.dataset.digest == sha256[:36] and {t.key: t.value for t in train.tags}["sha256"] == sha256
        assert train.dataset.source_type == "local" and "tiny.npz" in train.dataset.source
        for name, rows in (("cifar10-training", 100), ("cifar10-testing", 100)):  # data.train_limit, test_limit
            profile = json.loads(inputs[name].dataset.profile)
            assert profile["features_shape"] == [rows, 3, 32, 32] and profile["targets_shape"] == [rows]
        assert "system/cpu_utilization_percentage" in run.data.metrics
        assert "system/system_memory_usage_megabytes" in run.data.metrics


@pytest.mark.slow
def test_runs_carry_their_artifacts_and_model(sweep):
    client, _, runs, _ = sweep
    for run in runs:
        paths = set()
        for folder in ("config", "hydra", "plots", "logs"):
            paths |= {a.path for a in client.list_artifacts(run.info.run_id, folder)}
        assert {
            "config/config.yaml",
            "config/resolved.yaml",
            "config/overrides.txt",
            "hydra/config.yaml",
            "hydra/overrides.yaml",
            "plots/curves.png",
            "logs/train.log",
        } <= paths
        log = open(client.download_artifacts(run.info.run_id, "logs/train.log")).read()
        assert "Test set: Average loss:" in log
        (model,) = run.outputs.model_outputs  # the best weights as an MLflow model, not a plain file
        logged = client.get_logged_model(model.model_id)
        assert logged.name == "model" and logged.source_run_id == run.info.run_id
        assert not client.list_artifacts(run.info.run_id, "checkpoints")


@pytest.mark.slow
def test_store_and_outputs_stay_in_their_folders(sweep):
    _, parents, runs, tmp = sweep
    for run in runs + parents:
        assert run.info.artifact_uri.startswith((tmp / "mlruns" / "artifacts").as_uri())
    assert list((tmp / "two_runs" / "train" / "multiruns").iterdir())


def test_one_call_builds_a_run_and_its_model_normalizes_as_its_loaders(tiny_npz):
    """build.build_run: device, data, seeded first weights and the trainer in one call; the model a run
    logs (Classifier, given the data's [0, 1] mean and std) sees exactly what the trainer's loaders fed it."""
    import torch
    from hydra import compose, initialize_config_dir

    from sweeplab import build
    from sweeplab.classifier import Classifier

    def pieces(*extra):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return build.build_run(compose("train", [*TINY, f"data.npz={tiny_npz}", "data.mean=null", *extra]))

    run, again, other = pieces(), pieces(), pieces("trainer.seed=2")
    assert (
        run.device == torch.device("cpu")
        and len(run.data.train) == 500
        and run.trainer.train_loader.images.shape[0] == 500
    )
    first = [p.detach().clone() for p in run.trainer.model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(first, again.trainer.model.parameters()))  # seeded by trainer.seed
    assert not all(torch.equal(a, b) for a, b in zip(first, other.trainer.model.parameters()))
    assert run.data.mean != (0.4914, 0.4822, 0.4465)  # data.mean=null: the data's own statistics
    images = run.data.test.images[:8]
    model = Classifier(run.trainer.model, run.data.mean, run.data.std, run.data.classes)
    assert torch.equal(model.normalize(images), run.trainer.test_loader.normalize(images))


def test_help_lists_the_groups():
    result = run_app("train.py", "--help")
    assert result.returncode == 0
    for group in ("model:", "optimizer:", "scheduler:", "augmentation:", "data:", "trainer:", "experiment:", "prune:"):
        assert group in result.stdout
    assert "run the same command again to continue it" in result.stdout  # how a stopped sweep continues
    job = run_app("train.py", "--cfg", "job", "optimizer.lr=0.02")
    assert job.returncode == 0 and "lr: 0.02" in job.stdout


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["optimizer.lr=-1"], "optimizer.lr=-1 must be a positive number"),
        (["trainer.batch_size=100000"], "larger than the 500 training images"),
        (["data.npz=/nonexistent/cifar10.npz"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_creates_no_run(workdir, overrides, message):
    result = run_app("train.py", *TINY, *workdir["overrides"], *overrides)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and message in lines[-1]
    assert "Traceback" not in result.stderr
    client = mlflow_client(workdir["store"])
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_a_bad_value_in_a_sweep_stops_it_before_any_job(workdir):
    result = run_app("train.py", "-m", "optimizer.lr=0.1,-1", *TINY, *workdir["overrides"])
    assert result.returncode == 2
    assert "optimizer.lr=-1 must be a positive number" in result.stderr
    assert "Epoch 1" not in result.stdout + result.stderr
    client = mlflow_client(workdir["store"])
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])  # not even a parent


def no_runs_at_all(store) -> bool:
    client = mlflow_client(store)
    return not client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.parametrize(
    "overrides,message",
    [
        # data that cannot be read, in the second job: found before the first job trains
        (["data.npz={npz},/nonexistent/cifar10.npz"], "job data.npz=/nonexistent/cifar10.npz: "),
        # a model that builds but cannot train on 32x32 images: its rehearsed training step says so, in torch's words
        (
            ["data.npz={npz}", "optimizer.lr=0.1,0.2", "model=torchvision", "model.name=inception_v3"],
            "job optimizer.lr=0.1: the model cannot train on this run's 3x32x32 images: Calculated padded input size",
        ),
        # what the launcher itself refuses (joblib's Parallel), and the sweeper (Optuna's study)
        (
            ["data.npz={npz}", "optimizer.lr=0.1,0.2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0"],
            "error: hydra.launcher (JoblibLauncher): n_jobs == 0 in Parallel has no meaning",
        ),
        (
            ["data.npz={npz}", "hparams_search=optuna_lr", "hydra.sweeper.direction=up"],
            "error: hydra.sweeper.direction='up' must be maximize or minimize (null: from objective)",
        ),
    ],
)
def test_what_cannot_run_stops_a_sweep_before_any_job_and_its_parent_run(workdir, tiny_npz, overrides, message):
    """Data, a model that cannot train, the launcher's and the sweeper's own settings: one line, exit 2,
    before the first job and before the sweep's parent run exists."""
    model = [o for o in TINY if not o.startswith("model")] if "model=torchvision" in overrides else TINY
    job = [o.format(npz=tiny_npz) for o in overrides]
    result = run_app("train.py", "-m", *model, "trainer.epochs=1", *workdir["overrides"][:3], *job)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-3000:]
    assert lines[-1].startswith("error: ") and message in lines[-1], lines[-1]
    assert "Traceback" not in result.stderr and "Epoch 1" not in result.stdout + result.stderr
    assert no_runs_at_all(workdir["store"])  # not even the parent


@pytest.mark.slow
def test_a_job_failing_before_its_run_exists_still_fails_the_sweep(workdir, tiny_npz):
    """A job can still fail before its own run exists where nothing up front can tell (here: it
    reproduces a run that is not in the store); the sweep goes on and fails at its end."""
    result = run_app(
        "train.py",
        "-m",
        "reproduce=0123456789abcdef0123456789abcdef,null",
        "trainer.epochs=1",
        "data.train_limit=100",
        "data.test_limit=100",
        *TINY[:5],
        *workdir["overrides"],
    )
    assert result.returncode == 1
    assert "failed before its run started" in result.stderr
    assert "no run 0123456789abcdef0123456789abcdef" in result.stdout + result.stderr
    client = mlflow_client(workdir["store"])
    runs = client.search_runs([client.get_experiment_by_name("cifar10").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("sweeplab.kind") == "sweep"]
    assert [r.info.status for r in runs if r is not parent] == ["FINISHED"]
    assert (
        parent.info.status == "FAILED"
        and "job 0 (failed before its run started)" in parent.data.tags["sweeplab.failure"]
    )


# -- a single run stops early ---------------------------------------------------------------------
@pytest.mark.slow
def test_early_stopping_ends_a_run_on_its_patience_with_the_best_weights(workdir):
    result = run_app(
        "train.py",
        *workdir["overrides"],
        *TINY,
        "tracking.system_metrics=false",
        "trainer.epochs=8",
        "optimizer.lr=1e-7",  # cannot learn: test accuracy stays where the first epoch left it
        "trainer.early_stopping.patience=2",
        "trainer.early_stopping.monitor=test_loss",
        "trainer.early_stopping.min_delta=0.05",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = mlflow_client(workdir["store"])
    (run,) = client.search_runs([client.get_experiment_by_name("cifar10").experiment_id])
    epochs = sorted(m.step for m in client.get_metric_history(run.info.run_id, "test_loss"))
    assert run.info.status == "FINISHED" and epochs == [1, 2, 3]  # two epochs without improvement, then stop
    assert run.data.tags["sweeplab.stopped_at_epoch"] == "3"
    assert run.data.metrics["best_epoch"] in (1, 2, 3)
    assert (workdir["tmp"] / "checkpoints" / run.info.run_id / "best.pt").is_file()


def test_early_stopping_is_checked_before_any_work(workdir):
    stopping = ["trainer.early_stopping.patience=2", "trainer.early_stopping.monitor=val_acc"]
    result = run_app("train.py", *workdir["overrides"], *TINY, "tracking.system_metrics=false", *stopping)
    assert result.returncode == 2 and "needs a validation split" in result.stderr, result.stderr[-2000:]
