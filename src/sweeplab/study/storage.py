"""Where a study lives and how the sweepers and jobs that share it keep it honest: the database,
a study stored in it (its direction checked), trials asked for, heartbeats, and the trials whose
process died failed and queued again."""

from __future__ import annotations

import logging
import os
import socket
import threading
import warnings
from contextlib import contextmanager

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from sweeplab.errors import ConfigError, first_line
from sweeplab.study.settings import GRID, Settings
from sweeplab.tracking import safe_uri

log = logging.getLogger(__name__)

RUN_ATTR = "sweeplab.run_id"  # a trial's user attribute: the MLflow run that trains it
SWEEPER_ATTR = "sweeplab.sweeper"  # host:pid of the sweeper that asked for the trial


def open_storage(url: str, heartbeat_s: int) -> RDBStorage:
    """The study's database, its tables created on first use. A trial whose process stopped beating
    for two heartbeats is failed and queued again (``fail_stale``), with the MLflow run it continues."""
    kwargs = {}
    if url.startswith("sqlite:"):
        kwargs = {"connect_args": {"timeout": 60}}  # parallel jobs write to one file: wait for the lock
    elif url.startswith("postgresql"):
        kwargs = {"connect_args": {"connect_timeout": 5}}
    try:
        with quiet():
            return RDBStorage(
                url,
                engine_kwargs=kwargs,
                heartbeat_interval=heartbeat_s,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(),
            )
    except Exception as err:  # SQLAlchemy's and Optuna's errors: a database that is not there, not one, not Optuna's
        from sweeplab.redact import redact

        raise ConfigError(
            f"hydra.sweeper.storage={safe_uri(url)} cannot be used: {redact(first_line(err), [])}"
        ) from None


@contextmanager
def quiet():
    """Optuna's own log lines (a study created, a trial finished) at warning level: the sweep says what matters."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def stored(name: str, storage: RDBStorage, direction: str) -> bool:
    """Whether ``storage`` holds the study ``name``; ConfigError when it was made to optimise the other way."""
    if name not in optuna.study.get_all_study_names(storage):
        return False
    kept = optuna.load_study(study_name=name, storage=storage).direction.name.lower()
    if kept != direction:
        raise ConfigError(
            f"study {name!r} in {safe_uri(storage.url)} was made to {kept}, and this command asks to {direction} "
            f"(hydra.sweeper.direction): keep its direction, or start another study (hydra.sweeper.study_name=...)"
        )
    return True


def open_study(plan: Settings, storage: RDBStorage, name: str, attrs: dict) -> optuna.Study:
    """The study ``name``, created when new (a grid's jobs queued in order) with ``attrs`` as user attributes."""
    with quiet():
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=plan.sampler,
            pruner=plan.pruner,
            direction=plan.direction,
            load_if_exists=True,
        )
        for key, value in attrs.items():
            study.set_user_attr(key, value)
        if plan.kind == GRID and not study.get_trials(deepcopy=False):
            for point in plan.grid:
                study.enqueue_trial(point)
    return study


def load(name: str, storage: RDBStorage, pruner: optuna.pruners.BasePruner) -> optuna.Study:
    with quiet():
        sampler = optuna.samplers.RandomSampler()  # a job draws nothing: its values are in its trial
        return optuna.load_study(study_name=name, storage=storage, pruner=pruner, sampler=sampler)


def ask(study: optuna.Study, space: dict[str, BaseDistribution]) -> optuna.Trial:
    """The next trial: a queued one first (a grid's next job, a retry), else one the sampler draws.
    (Optuna warns that heartbeats are meant for ``study.optimize``: here the sweeper and the job
    record them, see ``Heartbeat``.)"""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        trial = study.ask(space)
    trial.set_user_attr(SWEEPER_ATTR, sweeper_id())
    return trial


def first_params(plan: Settings) -> dict:
    """A sweep's first job's values: a grid's first, or the sampler's first draw (in memory: nothing stored)."""
    if plan.kind == GRID:
        return plan.grid[0]
    with quiet():
        return ask(optuna.create_study(direction=plan.direction, sampler=plan.sampler), plan.space).params


def counted(trials) -> int:
    """Trials that count toward n_trials: all but those that a retry (of an interrupted or stale trial) replaced."""
    replaced = {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
    return sum(t.number not in replaced for t in trials)


def fail_stale(study: optuna.Study) -> None:
    """Trials whose process stopped beating (a sweeper or job killed with SIGKILL, a lost node) are
    failed, and queued again with their values and MLflow run."""
    optuna.storages.fail_stale_trials(study)


def sweeper_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    """Records a heartbeat for every trial in ``ids`` each interval, in a daemon thread, while entered:
    a trial whose heartbeats stop (its process died) becomes stale and is retried."""

    def __init__(self, storage: RDBStorage, interval_s: float):
        self.storage, self.interval_s = storage, interval_s
        self.ids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="sweeplab-heartbeat", daemon=True)

    def add(self, trial_id: int) -> None:
        self.ids.add(trial_id)
        self.storage.record_heartbeat(trial_id)

    def discard(self, trial_id: int) -> None:
        self.ids.discard(trial_id)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            for trial_id in list(self.ids):
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as err:  # the database away for a moment: the next beat may land
                    log.warning(f"could not record trial {trial_id}'s heartbeat: {str(err).splitlines()[0][:200]}")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def storage_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """A trial's id in its storage, what heartbeats are recorded for. Optuna keeps it private
    (``_trial_id``): this and ``trial_of`` are the two uses of its internals, and
    tests/test_sweeper.py fails loudly when an Optuna upgrade changes them."""
    return trial._trial_id
