"""Longer resumes with every scheduler, and a run that keeps no resumable checkpoint still hands over
its best model. In-process through the real entry points."""

import pytest

from apps import run_app
from support import TINY

pytestmark = pytest.mark.slow
SMALL = [*TINY, "data.train_limit=100", "data.test_limit=50", "trainer.epochs=2"]


def trained(store, name, *overrides):
    result = run_app("train.py", *SMALL, *store["where"], f"tracking.run_name={name}", *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    client = store["client"]
    (run,) = client.search_runs(
        [client.get_experiment_by_name("cifar10").experiment_id], f"attributes.run_name = '{name}'"
    )
    return run.info.run_id


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine"])
def test_a_schedule_laid_out_for_the_run_cannot_be_stretched(store, scheduler):
    run_id = trained(store, scheduler, f"scheduler={scheduler}", "trainer.batch_size=10")  # 20 steps
    result = run_app("train.py", f"resume={run_id}", "trainer.epochs=3", *store["where"])
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = [x for x in result.stderr.splitlines() if x.strip()][-1:]
    assert line.startswith("error: ") and f"python train.py reproduce={run_id} trainer.epochs=3" in line
    assert "cannot be stretched" in line and "Traceback" not in result.stderr
    run = store["client"].get_run(run_id)
    assert run.info.status == "FINISHED" and "sweeplab.resumed_from_epoch" not in run.data.tags  # not reopened


@pytest.mark.parametrize("scheduler", ["reduce_on_plateau", "none"])
def test_a_longer_resume_goes_on_where_the_schedule_allows(store, scheduler):
    run_id = trained(store, scheduler, f"scheduler={scheduler}")
    result = run_app("train.py", f"resume={run_id}", "trainer.epochs=3", *store["where"])
    assert result.returncode == 0, result.stderr[-3000:]
    client = store["client"]
    assert [m.step for m in sorted(client.get_metric_history(run_id, "test_acc"), key=lambda m: m.step)] == [1, 2, 3]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_checkpoint_every_0_still_keeps_the_best_model(store, tmp_path):
    run_id = trained(store, "no-last", "trainer.checkpoint_every=0")
    assert not (store["tmp"] / "checkpoints" / run_id / "last.pt").exists()
    assert (store["tmp"] / "checkpoints" / run_id / "best.pt").is_file()
    done = run_app(
        "explain.py",
        f"run_id={run_id}",
        store["where"][0],
        f"output_dir={tmp_path}",
        "num_images=2",
        "log_artifacts=false",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "misclassified_grid.png").is_file()
