"""The sweeper's config (``hydra/sweeper=sweeplab``, train.py's default) and its samplers
(``hydra/sweeper/sampler=tpe|random``), registered in Hydra's ConfigStore when Hydra scans its plugins."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class SweeplabSweeperConf:
    _target_: str = "hydra_plugins.sweeplab_sweeper.sweeplab_sweeper.SweeplabSweeper"
    _recursive_: bool = False  # the sampler's config reaches sweeplab as it is: built and checked there
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])
    # A search's sampler (a grid's jobs are the command's values): an Optuna sampler's _target_ and arguments.
    sampler: Any = MISSING  # filled by the sampler group (tpe by default)
    # maximize | minimize what the task returns (`objective`); null: maximize accuracies, minimize losses.
    direction: Any = None
    # A search's total number of trials, over every run of the command (the study's own count).
    n_trials: Any = 20
    # Jobs in flight at once; null: as many as the launcher runs at once (joblib n_jobs, submitit array_parallelism).
    n_jobs: Any = None
    # Where the study lives (an SQLAlchemy URL); null: sqlite:///<tracking.store_dir>/optuna.db, beside MLflow's store.
    storage: Any = None
    # The study: null gives a search a name from what it searches (the same command continues it) and a grid
    # one per sweep (the same command continues it only when it stopped part-way).
    study_name: Any = None
    # Seconds between a running trial's heartbeats: one silent for two of them (its process died) is retried.
    heartbeat_s: Any = 60
    # A search space in Hydra's sweep syntax, e.g. {optimizer.lr: "tag(log, interval(1e-4, 1e-1))"}.
    params: Any = None


TPE = {
    "_target_": "optuna.samplers.TPESampler",
    "seed": None,
    "n_startup_trials": 10,  # random trials before TPE models the results
    "multivariate": False,
    "constant_liar": False,  # true: trials in flight count as pessimistic results (parallel searches)
}
RANDOM = {"_target_": "optuna.samplers.RandomSampler", "seed": None}

store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="sweeplab", node=SweeplabSweeperConf, provider="sweeplab")
store.store(group="hydra/sweeper/sampler", name="tpe", node=TPE, provider="sweeplab")
store.store(group="hydra/sweeper/sampler", name="random", node=RANDOM, provider="sweeplab")
