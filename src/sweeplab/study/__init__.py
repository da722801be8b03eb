"""The one door to Optuna: a sweep's study, where it is stored, and the trial each job is.

Every multirun of train.py is an Optuna study. The sweeper (sweeplab.sweeper) asks the study for a
trial and launches one job per trial: a grid's trials are its jobs, queued in the command's order;
a search's are drawn by its sampler. The study lives in a database (SQLite beside the MLflow store
by default, PostgreSQL for a team): a sweep that stopped is continued where it stopped, several
sweepers can share one study, and each job reports its objective after every epoch and is stopped
(pruned) when the sweep's pruner finds it losing.

One module per job: ``settings`` (the config as a study), ``storage`` (the database, the study, heartbeats,
stale trials), ``trial`` (the job's side) and ``results``; this package is the only code that imports Optuna.

- ``settings(config)``: the study as the config describes it, every piece built and checked
  (one ConfigError line before any job and any MLflow run).
- ``open_storage``, ``stored``, ``open_study``: the database, a study already in it, the study.
- ``JobTrial``: the trial a job trains, as an engine callback (its objective after each epoch,
  stopped when pruned) and a context that keeps it alive and tells the study how it ended.
- ``Heartbeat``, ``fail_stale``, ``counted``: trials whose process died are failed and queued again.
- ``results``, ``trials_csv``, ``figures``: best value and params, the trials table, Optuna's figures.
"""

import warnings

import optuna

from sweeplab.study.results import figures, results, trials_csv
from sweeplab.study.settings import (
    DEFAULT_FILE,
    DIRECTIONS,
    GRID,
    SEARCH,
    SWEEPER,
    Settings,
    is_study_sweep,
    pruner,
    settings,
    slots,
    storage_url,
)
from sweeplab.study.storage import (
    RUN_ATTR,
    SWEEPER_ATTR,
    Heartbeat,
    ask,
    counted,
    fail_stale,
    first_params,
    load,
    open_storage,
    open_study,
    storage_id,
    stored,
    sweeper_id,
)
from sweeplab.study.trial import JobTrial, job_trial, objective_so_far, trial_of

# Heartbeats, stale trials and their retries are "experimental" in Optuna since 2.x: said once here, not per call.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

__all__ = [
    "DEFAULT_FILE",
    "DIRECTIONS",
    "GRID",
    "RUN_ATTR",
    "SEARCH",
    "SWEEPER",
    "SWEEPER_ATTR",
    "Heartbeat",
    "JobTrial",
    "Settings",
    "ask",
    "counted",
    "fail_stale",
    "figures",
    "first_params",
    "is_study_sweep",
    "job_trial",
    "load",
    "objective_so_far",
    "open_storage",
    "open_study",
    "pruner",
    "results",
    "settings",
    "slots",
    "storage_id",
    "storage_url",
    "stored",
    "sweeper_id",
    "trial_of",
    "trials_csv",
]
