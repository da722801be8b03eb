"""train.py end to end, as a user runs it: a sweep into MLflow, help, and bad input."""

import pytest

from conftest import TINY, mlflow_client, run_entry
from tiny_sweeps import two_run_sweep

EPOCHS = 2  # as tiny_sweeps.two_run_sweep trains


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_npz):
    """The session's shared 2-run lr sweep (tiny_sweeps.py), as train.py -m leaves it."""
    s = two_run_sweep(tmp_path_factory, tiny_npz)
    assert s["result"].returncode == 0, s["result"].stderr[-3000:]
    runs = s["client"].search_runs([s["experiment"].experiment_id])
    return s["client"], [r for r in runs if "sweeplab.sweep" in r.data.tags], s["tmp"]  # not the report run


def test_sweep_logs_one_finished_run_per_value(sweep):
    client, runs, _ = sweep
    assert len(runs) == 2
    assert sorted(float(r.data.params["optimizer.lr"]) for r in runs) == [0.02, 0.05]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.info.run_name for r in runs) == ["optimizer.lr=0.02", "optimizer.lr=0.05"]
    assert len({r.data.tags["sweeplab.sweep"] for r in runs}) == 1  # one sweep id groups them
    for run in runs:
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_time", "images_per_sec"):
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), key
        assert 0.0 < run.data.metrics["best_test_acc"] <= 1.0
        assert run.data.metrics["best_test_acc"] == max(
            m.value for m in client.get_metric_history(run.info.run_id, "test_acc")
        )
        assert run.data.params["trainer.epochs"] == str(EPOCHS)
        assert run.data.tags["mlflow.source.git.commit"]
        assert run.data.tags["sweeplab.git_dirty"] in ("True", "False")
        assert len(run.data.tags["sweeplab.data.train_sha256"]) == 64
        assert "optimizer.lr=" in run.data.tags["sweeplab.overrides"]


def test_sweep_runs_carry_their_artifacts(sweep):
    client, runs, _ = sweep
    for run in runs:
        paths = set()
        for folder in ("config", "hydra", "checkpoints", "plots", "logs"):
            paths |= {a.path for a in client.list_artifacts(run.info.run_id, folder)}
        assert {
            "config/config.yaml",
            "config/resolved.yaml",
            "config/overrides.txt",
            "hydra/config.yaml",
            "hydra/overrides.yaml",
            "checkpoints/best.pt",
            "plots/curves.png",
            "logs/train.log",
        } <= paths
        log = open(client.download_artifacts(run.info.run_id, "logs/train.log")).read()
        assert "Test set: Average loss:" in log


def test_store_and_outputs_stay_in_their_folders(sweep):
    _, runs, tmp = sweep
    for run in runs:
        assert run.info.artifact_uri.startswith((tmp / "mlruns" / "artifacts").as_uri())
    assert list((tmp / "outputs" / "train" / "multiruns").iterdir())


def test_help_lists_the_groups():
    result = run_entry("train.py", "--help")
    assert result.returncode == 0
    for group in ("model:", "optimizer:", "scheduler:", "augmentation:", "data:", "trainer:", "experiment:"):
        assert group in result.stdout
    job = run_entry("train.py", "--cfg", "job", "optimizer.lr=0.02")
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
    result = run_entry("train.py", *TINY, *workdir["overrides"], *overrides)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and message in lines[-1]
    assert "Traceback" not in result.stderr
    db = workdir["store"] / "mlflow.db"
    if db.exists():
        client = mlflow_client(workdir["store"])
        assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_a_bad_value_in_a_sweep_stops_it_before_any_job(workdir):
    result = run_entry("train.py", "-m", "optimizer.lr=0.1,-1", *TINY, *workdir["overrides"])
    assert result.returncode == 2
    assert "optimizer.lr=-1 must be a positive number" in result.stderr
    assert "Epoch 1" not in result.stdout + result.stderr


def test_a_job_failing_before_its_run_exists_still_fails_the_sweep(workdir, tiny_npz):
    result = run_entry(
        "train.py",
        "-m",
        f"data.npz=/nonexistent/cifar10.npz,{tiny_npz}",
        "trainer.epochs=1",
        *TINY,
        *workdir["overrides"][:3],
    )
    assert result.returncode == 1
    assert "failed jobs" in result.stderr and "does not exist" in result.stdout + result.stderr
    client = mlflow_client(workdir["store"])
    runs = client.search_runs([client.get_experiment_by_name("cifar10").experiment_id])
    assert [r.info.status for r in runs if "sweeplab.sweep" in r.data.tags] == ["FINISHED"]
