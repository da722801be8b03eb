"""Reproduce a run, resume it after a kill, and never lose a run. The kill synchronises on the run
itself: a callback (pause.py) pauses it right after a given epoch's checkpoint, and only then does
the test send SIGKILL, however fast or slow the machine is. (Catchable signals: test_signals.py.)"""

import signal
import subprocess
import sys

import pytest

from apps import run_app
from pause import pause_overrides, wait_for
from support import ROOT, TINY, entry_env, epoch_metrics

pytestmark = pytest.mark.slow
EPOCHS = 3


@pytest.fixture(scope="module")
def repro(store):
    """The module's store, with the overrides of its runs."""
    data = ["data.train_limit=200", "data.test_limit=100"]
    return {**store, "overrides": [*TINY, *data, f"trainer.epochs={EPOCHS}", *store["where"]]}


def runs_of(repro):
    client = repro["client"]
    return client, client.search_runs([client.get_experiment_by_name("cifar10").experiment_id])


@pytest.fixture(scope="module")
def reference(repro):
    """One uninterrupted run: the yardstick for reproduction and resumption."""
    result = run_app("train.py", *repro["overrides"], "tracking.run_name=reference")
    assert result.returncode == 0, result.stderr[-3000:]
    client, runs = runs_of(repro)
    run = next(r for r in runs if r.info.run_name == "reference")
    return run.info.run_id, epoch_metrics(client, run.info.run_id)


def test_reproduce_from_run_id_gives_identical_metrics(repro, reference):
    run_id, expected = reference
    result = run_app("train.py", f"reproduce={run_id}", *repro["where"])
    assert result.returncode == 0, result.stderr[-3000:]
    client, runs = runs_of(repro)
    rerun = next(r for r in runs if r.data.tags.get("sweeplab.reproduces") == run_id)
    assert epoch_metrics(client, rerun.info.run_id) == expected
    assert rerun.data.params["optimizer.lr"] == client.get_run(run_id).data.params["optimizer.lr"]


def test_reproduce_from_saved_config_folder_with_hydra(repro, reference, tmp_path):
    run_id, expected = reference
    folder = repro["client"].download_artifacts(run_id, "config", str(tmp_path))
    result = run_app(
        "train.py", "--config-dir", folder, "--config-name", "config", "tracking.run_name=from-folder", *repro["where"]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client, runs = runs_of(repro)
    rerun = next(r for r in runs if r.info.run_name == "from-folder")
    assert epoch_metrics(client, rerun.info.run_id) == expected
    assert rerun.data.tags["sweeplab.reproduces"] == run_id  # the saved config names its origin


def _start(overrides, *extra):
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *overrides, *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=entry_env(),
    )


def _run_named(repro, name):
    _, runs = runs_of(repro)
    (run,) = [r for r in runs if r.info.run_name == name]
    return run


def test_sigkill_then_resume_matches_an_uninterrupted_run(repro, reference, tmp_path):
    """Killed right after epoch 2's checkpoint (before its metrics reached MLflow), then resumed: the
    same metrics as the uninterrupted run, one value per epoch."""
    _, expected = reference
    flag = tmp_path / "paused"
    proc = _start(repro["overrides"], "tracking.run_name=killed", *pause_overrides(2, flag))
    wait_for(flag, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_id = _run_named(repro, "killed").info.run_id
    client = repro["client"]
    assert client.get_run(run_id).info.status == "RUNNING"  # a killed process cannot say otherwise
    result = run_app("train.py", f"resume={run_id}", *repro["where"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert epoch_metrics(client, run_id) == expected  # same final metrics, one value per epoch


def test_truncated_checkpoint_is_a_clear_error(repro, reference):
    run_id, _ = reference
    last = repro["tmp"] / "checkpoints" / run_id / "last.pt"
    data = last.read_bytes()
    try:
        last.write_bytes(data[: len(data) // 3])
        result = run_app("train.py", f"resume={run_id}", "trainer.epochs=6", *repro["where"])
    finally:
        last.write_bytes(data)
    assert result.returncode == 2
    assert str(last) in result.stderr and "corrupt or truncated" in result.stderr
    assert "Traceback" not in result.stderr
    assert repro["client"].get_run(run_id).info.status == "FINISHED"  # the run is left as it was
