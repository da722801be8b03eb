"""The job's side: the trial of the sweep's study that a job trains, as an engine callback (its
objective after each epoch, stopped when pruned) and a context that keeps it alive and tells the
study how it ended."""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager

import optuna
from omegaconf import DictConfig
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from sweeplab import job
from sweeplab.engine import Callback, higher_is_better
from sweeplab.errors import ConfigError
from sweeplab.study.settings import pruner, storage_url
from sweeplab.study.storage import RUN_ATTR, Heartbeat, load, open_storage, quiet, storage_id

log = logging.getLogger(__name__)


def objective_so_far(history: list[dict], objective: str) -> float:
    """The job's objective after the last epoch of ``history``: ``best_<metric>`` is the best
    value so far (what the job returns if it ends there), any other metric its last value."""
    metric = objective.removeprefix("best_")
    values = [m[metric] for m in history if metric in m]
    if objective.startswith("best_"):
        return (max if higher_is_better(metric) else min)(values)
    return values[-1]


def trial_of(study: optuna.Study, number: int) -> tuple[optuna.Trial, int]:
    """Trial ``number`` of ``study`` in the job that trains it, and its storage id. Optuna hands a
    ``Trial`` only to the process that asked for it (``study.ask``); a job in another process (a
    launcher's worker, a SLURM node) builds one with the ``Trial`` constructor, which Optuna's
    documentation does not recommend: its one use (see ``storage_id``)."""
    (frozen,) = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    return optuna.trial.Trial(study, storage_id(frozen)), storage_id(frozen)


class JobTrial(Callback):
    """The trial of the sweep's study that this job trains.

    As an engine callback: after each epoch, the objective so far is reported (a resumed run
    reports its earlier epochs first), and the fit stops when the sweep's pruner finds the trial
    losing (``pruned_at``). As a context (``running()``): heartbeats while the job runs, and the
    outcome told to the study: COMPLETE with the objective, PRUNED, FAIL; an interrupted job (a
    signal) hands its trial back, FAIL and queued again with the MLflow run that the retry resumes.
    """

    def __init__(self, study: optuna.Study, storage: RDBStorage, number: int, objective: str, heartbeat_s: float):
        self.study, self.storage, self.number, self.objective = study, storage, number, objective
        self.trial, self.trial_id = trial_of(study, number)
        frozen = self.frozen()
        if frozen.state != TrialState.RUNNING:
            raise ConfigError(
                f"trial {number} of study {study.study_name} is {frozen.state.name}, not running: another job "
                f"(its retry) has it; this job stops"
            )
        self.resume_run: str | None = frozen.user_attrs.get(RUN_ATTR)
        self.pruned_at: int | None = None
        self.heartbeat = Heartbeat(storage, heartbeat_s)

    def frozen(self) -> optuna.trial.FrozenTrial:
        return self.storage.get_trial(self.trial_id)

    def started(self, run_id: str) -> None:
        """The MLflow run that trains the trial (a retry resumes it)."""
        self.trial.set_user_attr(RUN_ATTR, run_id)

    # the engine's callbacks
    def on_fit_start(self, trainer) -> None:
        known = self.frozen().intermediate_values
        for i, metrics in enumerate(trainer.history):
            if metrics["epoch"] not in known:
                self.trial.report(objective_so_far(trainer.history[: i + 1], self.objective), metrics["epoch"])

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        epoch = metrics["epoch"]
        self.trial.report(objective_so_far(trainer.history, self.objective), epoch)
        if epoch < trainer.epochs and self.trial.should_prune():  # after the last epoch there is nothing to save
            self.pruned_at = epoch
            trainer.stop(f"pruned by the sweep's {type(self.study.pruner).__name__}")

    # how it ends
    @contextmanager
    def running(self):
        with self.heartbeat:
            self.heartbeat.add(self.trial_id)
            try:
                yield self
            except KeyboardInterrupt:
                self.hand_back()
                raise
            except SystemExit:  # a cluster requeues the job: the requeued job trains this trial on
                raise
            except BaseException:
                self.study.tell(self.number, state=TrialState.FAIL, skip_if_finished=True)
                raise

    def tell(self, value: float) -> None:
        """The job's outcome: PRUNED when the pruner stopped it, else COMPLETE with ``value`` (NaN: FAIL)."""
        with quiet():
            if self.pruned_at is not None:
                self.study.tell(self.number, state=TrialState.PRUNED, skip_if_finished=True)
            elif value is None or not math.isfinite(value):
                self.study.tell(self.number, state=TrialState.FAIL, skip_if_finished=True)
            else:
                self.study.tell(self.number, value, skip_if_finished=True)

    def hand_back(self) -> None:
        """An interrupted job: its trial FAIL, and queued again with its values and MLflow run."""
        with quiet():
            self.study.tell(self.number, state=TrialState.FAIL, skip_if_finished=True)
            RetryHeartbeatStaleTrialCallback()(self.study, self.frozen())
        log.info(f"trial {self.number} is queued again: the sweep's next run continues it")


def job_trial(cfg: DictConfig) -> JobTrial | None:
    """The current multirun job's trial (None outside a study sweep); ``cfg`` is the job's config."""
    name = job.study_name()
    if not name:
        return None
    from hydra.core.hydra_config import HydraConfig

    sweeper = HydraConfig.get().sweeper
    storage = open_storage(storage_url(sweeper.get("storage"), cfg.tracking), int(sweeper.heartbeat_s))
    study = load(name, storage, pruner(cfg.get("prune")))
    return JobTrial(study, storage, job.number(), str(cfg.objective), int(sweeper.heartbeat_s))
