"""Signals end a run KILLED with its last complete epoch checkpointed and the command that continues
it. Each run signals itself right after a known epoch (pause.py): the signal arrives exactly there,
however fast or slow the machine is. (A cluster job that submitit requeues resumes its own run:
test_scale_out.py, in the submitit sweep against the server.)"""

import signal

import pytest

from apps import run_app
from pause import pause_overrides
from support import TINY, epoch_metrics

pytestmark = pytest.mark.slow
# Checkpoints every 2 epochs: a signal after epoch 1 finds no last.pt of epoch 1 on disk until the
# interrupted run writes it.
RUN = [*TINY, "trainer.epochs=2", "trainer.checkpoint_every=2", "data.train_limit=100", "data.test_limit=50"]


def named(store, name):
    client = store["client"]
    (run,) = client.search_runs(
        [client.get_experiment_by_name("cifar10").experiment_id], f"attributes.run_name = '{name}'"
    )
    return run


@pytest.fixture
def terminal_sigint():
    """SIGINT handled as in a terminal (Python's KeyboardInterrupt): a suite started in the background
    by a non-interactive shell inherits SIGINT ignored, and Python leaves it so."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def reference(store):
    result = run_app("train.py", *RUN, *store["where"], "tracking.run_name=reference")
    assert result.returncode == 0, result.stderr[-3000:]
    return epoch_metrics(store["client"], named(store, "reference").info.run_id)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_ends_the_run_killed_with_a_checkpoint_and_how_to_resume(
    store, reference, tmp_path, signum, terminal_sigint
):
    name = f"stopped-{signum.name}"
    result = run_app(
        "train.py",
        *RUN,
        *store["where"],
        f"tracking.run_name={name}",
        *pause_overrides(1, tmp_path / "paused", signum.name),
    )
    assert result.returncode == 128 + signum, result.stderr[-3000:]
    run = named(store, name)
    command = f"python train.py resume={run.info.run_id}"
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"interrupted ({signum.name}): ") and command in last, last
    assert run.info.status == "KILLED"
    assert signum.name in run.data.tags["sweeplab.failure"] and command in run.data.tags["sweeplab.failure"]
    assert (store["tmp"] / "checkpoints" / run.info.run_id / "last.pt").is_file()  # written by the interrupt
    if signum == signal.SIGTERM:  # the resume goes on from epoch 1, which the signal had checkpointed
        resumed = run_app("train.py", f"resume={run.info.run_id}", *store["where"])
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert store["client"].get_run(run.info.run_id).info.status == "FINISHED"
        assert epoch_metrics(store["client"], run.info.run_id) == reference
