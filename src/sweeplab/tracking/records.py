"""The tracking package's vocabulary: the tags it writes and what the rest of the project knows of a run."""

from __future__ import annotations

from dataclasses import dataclass, field

SWEEP_TAG = "sweeplab.sweep"
FAILURE_TAG = "sweeplab.failure"
KIND_TAG = "sweeplab.kind"  # "sweep" on a sweep's parent run
CONFIGURATION_TAG = "sweeplab.configuration"  # what a run is a seed of: its swept values but the seed
SEED_TAG = "sweeplab.seed"
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI
PARENT_TAG = "mlflow.parentRunId"  # MLflow's nested runs: the UI folds a sweep's jobs under it
MODEL_NAME = "model"  # the name each training run logs its best weights under
BEST_ALIAS = "best"  # the registry alias of the best version so far
PRUNED_TAG = "sweeplab.pruned_at_epoch"  # a sweep's pruner stopped the run after this epoch (it ends KILLED)
STOPPED_TAG = "sweeplab.stopped_at_epoch"  # early stopping ended the run after this epoch (it ends FINISHED)
TRIAL_TAG = "sweeplab.trial"  # the number of the run's trial in its sweep's Optuna study
RETRIED_TAG = "sweeplab.retried_as"  # an interrupted run its retry could not resume: the run that replaced it


@dataclass(frozen=True)
class Run:
    """What the jobs need to know of an MLflow run."""

    run_id: str
    name: str
    experiment_id: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED
    start_time: int | None  # ms since the epoch
    end_time: int | None
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)  # the latest value of each
    tags: dict = field(default_factory=dict)

    @property
    def wall_time_s(self) -> float | None:
        return (self.end_time - self.start_time) / 1000 if self.end_time and self.start_time else None

    @property
    def pruned_at(self) -> int | None:
        """The epoch after which a sweep's pruner stopped this run (None: it was not pruned)."""
        epoch = self.tags.get(PRUNED_TAG)
        return int(epoch) if epoch and self.status == "KILLED" else None


@dataclass
class DataInput:
    """One split of a run's data, to be recorded as an MLflow dataset input."""

    name: str  # e.g. cifar10-training
    context: str  # training, testing or validation
    images: object  # numpy arrays: MLflow reads their shape and size, it does not copy or hash them
    labels: object
    sha256: str
    source: str  # a file or a download URL
    tags: dict = field(default_factory=dict)


@dataclass
class RunStart:
    """What a new run records about where it comes from, as plain values: params, tags, its data,
    text files (artifact path -> text) and folders (artifact folder -> local folder)."""

    params: dict
    tags: dict
    datasets: list[DataInput] = field(default_factory=list)
    texts: dict = field(default_factory=dict)
    folders: dict = field(default_factory=dict)


def record_of(run) -> Run:
    info, data = run.info, run.data
    return Run(
        info.run_id,
        info.run_name or "",
        info.experiment_id,
        info.status,
        info.start_time,
        info.end_time,
        dict(data.params),
        dict(data.metrics),
        dict(data.tags),
    )
