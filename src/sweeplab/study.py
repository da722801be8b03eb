"""The one door to Optuna: a sweep's study, where it is stored, and the trial each job is.

Every multirun of train.py is an Optuna study. The sweeper (sweeplab.sweeper) asks the study for a
trial and launches one job per trial: a grid's trials are its jobs, queued in the command's order;
a search's are drawn by its sampler. The study lives in a database (SQLite beside the MLflow store
by default, PostgreSQL for a team): a sweep that stopped is continued where it stopped, several
sweepers can share one study, and each job reports its objective after every epoch and is stopped
(pruned) when the sweep's pruner finds it losing.

- ``settings(config)``: the study as the config describes it, every piece built and checked
  (one ConfigError line before any job and any MLflow run).
- ``open_storage``, ``stored``, ``open_study``: the database, a study already in it, the study.
- ``JobTrial``: the trial a job trains, as an engine callback (its objective after each epoch,
  stopped when pruned) and a context that keeps it alive and tells the study how it ended.
- ``Heartbeat``, ``fail_stale``, ``counted``: trials whose process died are failed and queued again.
- ``results``, ``trials_csv``, ``figures``: best value and params, the trials table, Optuna's figures.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import socket
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from sweeplab import job
from sweeplab.checks import integer
from sweeplab.engine import Callback, higher_is_better
from sweeplab.errors import ConfigError

log = logging.getLogger(__name__)
# Heartbeats, stale trials and their retries are "experimental" in Optuna since 2.x: said once here, not per call.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

# The sweeper plugin (src/hydra_plugins/sweeplab_sweeper): a multirun with it is a study.
SWEEPER = "hydra_plugins.sweeplab_sweeper.sweeplab_sweeper.SweeplabSweeper"
GRID, SEARCH = "grid", "search"
DEFAULT_FILE = "optuna.db"  # the study's database beside the MLflow store (tracking.store_dir)
RUN_ATTR = "sweeplab.run_id"  # a trial's user attribute: the MLflow run that trains it
SWEEPER_ATTR = "sweeplab.sweeper"  # host:pid of the sweeper that asked for the trial
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


# -- the config ---------------------------------------------------------------------------------
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
    return f"sqlite:///{Path(tracking.store_dir).expanduser().resolve() / DEFAULT_FILE}"


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
    if not node:
        return optuna.samplers.TPESampler()
    made = _build("hydra.sweeper.sampler", node)
    if not isinstance(made, optuna.samplers.BaseSampler):
        raise ConfigError(f"hydra.sweeper.sampler: {node.get('_target_')} is not an Optuna sampler")
    return made


def pruner(node: DictConfig | None) -> optuna.pruners.BasePruner:
    """The ``prune`` group's pruner (``prune=none``: one that never prunes)."""
    if not node:
        return optuna.pruners.NopPruner()
    made = _build("prune", node)
    if not isinstance(made, optuna.pruners.BasePruner):
        raise ConfigError(f"prune: {node.get('_target_')} is not an Optuna pruner")
    return made


def _build(key: str, node: DictConfig):
    try:
        return instantiate(OmegaConf.to_container(node, resolve=True))
    except Exception as err:
        cause = err.__cause__ or err  # Hydra wraps the constructor's own error
        text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise ConfigError(f"{key}: {text}") from None


# -- the database and the study -----------------------------------------------------------------
def open_storage(url: str, heartbeat_s: int) -> RDBStorage:
    """The study's database, its tables created on first use. A trial whose process stopped beating
    for two heartbeats is failed and queued again (``fail_stale``), with the MLflow run it continues."""
    kwargs = {}
    if url.startswith("sqlite:"):
        kwargs = {"connect_args": {"timeout": 60}}  # parallel jobs write to one file: wait for the lock
    elif url.startswith("postgresql"):
        kwargs = {"connect_args": {"connect_timeout": 5}}
    try:
        with _quiet():
            return RDBStorage(
                url,
                engine_kwargs=kwargs,
                heartbeat_interval=heartbeat_s,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(),
            )
    except Exception as err:  # SQLAlchemy's and Optuna's errors: a database that is not there, not one, not Optuna's
        from sweeplab.redact import redact

        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"hydra.sweeper.storage={_safe(url)} cannot be used: {redact(text, [])}") from None


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


@contextmanager
def _quiet():
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
            f"study {name!r} in {_safe(storage.url)} was made to {kept}, and this command asks to {direction} "
            f"(hydra.sweeper.direction): keep its direction, or start another study (hydra.sweeper.study_name=...)"
        )
    return True


def open_study(plan: Settings, storage: RDBStorage, name: str, attrs: dict) -> optuna.Study:
    """The study ``name``, created when new (a grid's jobs queued in order) with ``attrs`` as user attributes."""
    with _quiet():
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
    with _quiet():
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
    with _quiet():
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


# -- the job's side -----------------------------------------------------------------------------
def objective_so_far(history: list[dict], objective: str) -> float:
    """The job's objective after the last epoch of ``history``: ``best_<metric>`` is the best
    value so far (what the job returns if it ends there), any other metric its last value."""
    metric = objective.removeprefix("best_")
    values = [m[metric] for m in history if metric in m]
    if objective.startswith("best_"):
        return (max if higher_is_better(metric) else min)(values)
    return values[-1]


def storage_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """A trial's id in its storage, what heartbeats are recorded for. Optuna keeps it private
    (``_trial_id``): this and ``trial_of`` are the two uses of its internals, and
    tests/test_sweeper.py fails loudly when an Optuna upgrade changes them."""
    return trial._trial_id


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
        with _quiet():
            if self.pruned_at is not None:
                self.study.tell(self.number, state=TrialState.PRUNED, skip_if_finished=True)
            elif value is None or not math.isfinite(value):
                self.study.tell(self.number, state=TrialState.FAIL, skip_if_finished=True)
            else:
                self.study.tell(self.number, value, skip_if_finished=True)

    def hand_back(self) -> None:
        """An interrupted job: its trial FAIL, and queued again with its values and MLflow run."""
        with _quiet():
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


# -- the results ----------------------------------------------------------------------------------
def results(study: optuna.Study) -> dict:
    """The study's best trial (number, value, params, MLflow run) and its trials counted by state."""
    trials = study.get_trials(deepcopy=False)
    out = {"trials": len(trials)}
    for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING):
        out[state.name.lower()] = sum(t.state == state for t in trials)
    if out["complete"]:
        best = study.best_trial
        out["best"] = {
            "number": best.number,
            "value": best.value,
            "params": dict(best.params),
            "run_id": best.user_attrs.get(RUN_ATTR),
        }
    return out


def trials_csv(study: optuna.Study) -> str:
    """Every trial: number, state, value, params, its MLflow run, start and end (Optuna's own table)."""
    attrs = ("number", "state", "value", "params", "user_attrs", "datetime_start", "datetime_complete")
    table = study.trials_dataframe(attrs=attrs)
    return table.to_csv(index=False)


def figures(study: optuna.Study) -> dict:
    """Optuna's own figures (matplotlib): optimization history, parameter importances, intermediate
    values. One that the study cannot draw yet (importances need two finished trials) is left out."""
    import matplotlib
    from optuna.visualization import matplotlib as plots

    out = {}
    for name, draw in (
        ("optimization_history", plots.plot_optimization_history),
        ("param_importances", plots.plot_param_importances),
        ("intermediate_values", plots.plot_intermediate_values),
    ):
        try:  # Optuna sets its own matplotlib style: for its figures only, not the project's
            with warnings.catch_warnings(), matplotlib.rc_context():
                warnings.simplefilter("ignore")
                axes = draw(study)
            out[name] = axes.figure
        except Exception as err:
            log.info(f"no {name} figure: {str(err).splitlines()[0][:200] if str(err) else type(err).__name__}")
    return out
