"""A sweep's study as its config describes it: grid or search, its space (Hydra's sweep syntax as
Optuna distributions), sampler, pruner, direction, storage and how many jobs at once, every piece
built and checked (one ConfigError line before any job and any MLflow run)."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from sweeplab import job
from sweeplab.build import building
from sweeplab.checks import integer
from sweeplab.engine import higher_is_better
from sweeplab.errors import ConfigError
from sweeplab.paths import store_folder

log = logging.getLogger(__name__)

# The sweeper plugin (src/hydra_plugins/sweeplab_sweeper): a multirun with it is a study.
SWEEPER = "hydra_plugins.sweeplab_sweeper.sweeplab_sweeper.SweeplabSweeper"
GRID, SEARCH = "grid", "search"
DEFAULT_FILE = "optuna.db"  # the study's database beside the MLflow store (tracking.store_dir)
DIRECTIONS = ("maximize", "minimize")


def is_study_sweep(config: DictConfig) -> bool:
    """Whether the configured sweeper is the study sweeper (the default of train.py)."""
    return str(config.hydra.sweeper.get("_target_", "")) == SWEEPER


@dataclass
class Settings:
    """A sweep's study as its config describes it."""

    kind: str  # GRID (the command's values, every combination) or SEARCH (drawn by the sampler)
    study_name: str | None  # configured, or a search's from its definition; None: a grid's own, per sweep
    storage_url: str
    direction: str  # maximize | minimize
    n_trials: int  # a search's total over every run of the command
    slots: int  # jobs in flight at once
    heartbeat_s: int
    sampler: optuna.samplers.BaseSampler
    pruner: optuna.pruners.BasePruner
    space: dict[str, BaseDistribution]  # the swept or searched keys
    template: list[tuple[str, str | None]]  # a job's overrides in order: (key, fixed value | None: the trial's)
    grid: list[dict[str, str]] = field(default_factory=list)  # a grid's jobs, in order
    fingerprint: str = ""  # what the sweep is (experiment overrides, search space), not where or how it runs

    def overrides(self, params: dict) -> list[str]:
        """A trial's job: the command's fixed overrides and the trial's values, in the command's order."""
        return [f"{key}={params[key] if value is None else value}" for key, value in self.template]

    @property
    def swept(self) -> list[str]:
        return [job.key_of(key) for key in self.space]


def settings(config: DictConfig, config_loader=None) -> Settings:
    """The study of this multirun's config (``hydra.sweeper``, ``prune``, the command's overrides),
    every piece built: ConfigError (one line naming the key) for anything that cannot be used."""
    sweeper = config.hydra.sweeper
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    try:
        # seeds=N (a grid's shorthand, sweeplab.sweep.check_seeds): its trainer.seed=range(1,N+1) before the command's.
        seeds = job.seed_overrides(config.get("seeds")) if not params else []
        parsed = OverridesParser.create(config_loader).parse_overrides(
            params + seeds + list(config.hydra.overrides.task)
        )
    except Exception as err:
        raise ConfigError(f"hydra.sweeper.params: {str(err).strip().splitlines()[0]}") from None
    by_key = {o.get_key_element(): o for o in parsed}  # a key given twice: the command line's (the later) one
    searched = bool(params) or any(o.is_sweep_override() and not o.is_discrete_sweep() for o in by_key.values())
    template = [(k, None if o.is_sweep_override() else o.get_value_element_as_str()) for k, o in by_key.items()]
    space, grid = {}, []
    if searched:
        space = {k: _distribution(k, o) for k, o in by_key.items() if o.is_sweep_override()}
    else:
        swept = [k for k, o in by_key.items() if o.is_sweep_override()]
        for overrides in job.grid(by_key.values()):
            values = dict(o.split("=", 1) for o in overrides)
            grid.append({k: values[k] for k in swept})
        space = {k: CategoricalDistribution(list(dict.fromkeys(point[k] for point in grid))) for k in swept}

    kind = SEARCH if searched else GRID
    experiment = job.experiment_overrides(list(config.hydra.overrides.task), drop=("prune",))
    fingerprint = _digest([kind, *sorted(experiment), *sorted(params)])
    name = sweeper.get("study_name")
    if name is None and kind == SEARCH:
        name = f"{config.tracking.experiment}-{fingerprint}"
    direction = sweeper.get("direction")
    if direction is None:
        direction = "maximize" if higher_is_better(str(config.objective)) else "minimize"
    if direction not in DIRECTIONS:
        raise ConfigError(f"hydra.sweeper.direction={direction!r} must be maximize or minimize (null: from objective)")
    integer(sweeper.get("n_trials"), "hydra.sweeper.n_trials")
    integer(sweeper.get("n_jobs"), "hydra.sweeper.n_jobs", optional=True)
    integer(sweeper.get("heartbeat_s"), "hydra.sweeper.heartbeat_s")
    return Settings(
        kind=kind,
        study_name=None if name is None else str(name),
        storage_url=storage_url(sweeper.get("storage"), config.tracking),
        direction=direction,
        n_trials=int(sweeper.n_trials),
        slots=slots(sweeper.get("n_jobs"), config.hydra.launcher),
        heartbeat_s=int(sweeper.heartbeat_s),
        sampler=_sampler(sweeper.get("sampler")) if searched else optuna.samplers.RandomSampler(seed=0),
        pruner=pruner(config.get("prune")),
        space=space,
        template=template,
        grid=grid,
        fingerprint=fingerprint,
    )


def _digest(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def _distribution(key: str, override) -> BaseDistribution:
    """Hydra's sweep syntax as an Optuna distribution: ``interval(a, b)`` (``tag(log, ...)``: on a log
    scale; two ints: integers) is a range; ``choice(...)``, ``a,b,c`` and ``range(...)`` are categorical
    over the values as written."""
    if override.is_discrete_sweep():
        return CategoricalDistribution(list(override.sweep_string_iterator()))
    value = override.value()
    log_scale = "log" in value.tags
    try:
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    except ValueError as err:
        raise ConfigError(f"{key}={override.get_value_element_as_str()}: {err}") from None


def storage_url(storage: str | None, tracking: DictConfig) -> str:
    """``hydra.sweeper.storage``, else an SQLite file beside the MLflow store (``tracking.store_dir``)."""
    if storage:
        return str(storage)
    return f"sqlite:///{store_folder(tracking) / DEFAULT_FILE}"


def slots(n_jobs: int | None, launcher: DictConfig) -> int:
    """How many jobs the sweeper keeps in flight: ``hydra.sweeper.n_jobs``, else as many as the
    launcher runs at once (joblib's n_jobs, submitit's array_parallelism). Hydra's basic launcher
    runs a job in the sweeper's own process and thread (where signals arrive): one at a time."""
    if str(launcher.get("_target_", "")).endswith(".BasicLauncher"):
        if n_jobs and n_jobs > 1:
            log.info(f"hydra.sweeper.n_jobs={n_jobs}: the basic launcher runs one job at a time")
        return 1
    if n_jobs:
        return int(n_jobs)
    parallel = launcher.get("n_jobs") or launcher.get("array_parallelism") or 1
    return (os.cpu_count() or 1) if parallel == -1 else int(parallel)


def _sampler(node: DictConfig | None) -> optuna.samplers.BaseSampler:
    return _optuna("hydra.sweeper.sampler", node, optuna.samplers.BaseSampler, optuna.samplers.TPESampler)


def pruner(node: DictConfig | None) -> optuna.pruners.BasePruner:
    """The ``prune`` group's pruner (``prune=none``: one that never prunes)."""
    return _optuna("prune", node, optuna.pruners.BasePruner, optuna.pruners.NopPruner)


def _optuna(key: str, node: DictConfig | None, kind: type, default: type):
    """The Optuna object ``node`` describes (``default()`` when it is empty), which must be a ``kind``."""
    if not node:
        return default()
    with building(key):
        made = instantiate(OmegaConf.to_container(node, resolve=True))
    if not isinstance(made, kind):
        what = kind.__name__.removeprefix("Base").lower()  # BaseSampler: an Optuna sampler
        raise ConfigError(f"{key}: {node.get('_target_')} is not an Optuna {what}")
    return made
