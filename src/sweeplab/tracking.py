"""The one door to MLflow: the store, a run's lifecycle, params / metrics / files / figures, run search
and a run's files. No other module imports mlflow; they speak in plain values (run ids, dicts, paths,
figures) and ``Run`` records."""

from __future__ import annotations

import functools
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from sweeplab import redact
from sweeplab.engine import Callback
from sweeplab.errors import ConfigError
from sweeplab.settings import repo_root

log = logging.getLogger(__name__)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in the console log

SWEEP_TAG = "sweeplab.sweep"
FAILURE_TAG = "sweeplab.failure"
KIND_TAG = "sweeplab.kind"  # "sweep" on a sweep's parent run
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI
PARENT_TAG = "mlflow.parentRunId"  # MLflow's nested runs: the UI folds a sweep's jobs under it
MODEL_NAME = "model"  # the name each training run logs its best weights under
BEST_ALIAS = "best"  # the registry alias of the best version so far


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


def _record(run) -> Run:
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


# -- the store ----------------------------------------------------------------------------------
def store_uri(tracking: DictConfig) -> str:
    """``tracking.uri`` (or $MLFLOW_TRACKING_URI), else a SQLite database in ``tracking.store_dir``."""
    if tracking.get("uri"):
        return str(tracking.uri)
    store = Path(tracking.store_dir).expanduser().resolve()
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"tracking.store_dir={store} cannot be created ({err.strerror or err})") from None
    return f"sqlite:///{store / 'mlflow.db'}"


def safe_uri(uri: str) -> str:
    """``uri`` without the password it may carry (for messages)."""
    from urllib.parse import urlsplit

    password = urlsplit(uri).password
    return uri.replace(f":{password}@", ":***@") if password else uri


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (its query, e.g. ``?mode=ro``, left out)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :].split("?")[0].removeprefix("file:"))  # also sqlite:///file:<path>?mode=ro


def check_sqlite(uri: str) -> None:
    """A local store that exists must be an SQLite database this MLflow knows the schema of (one line
    otherwise, before MLflow retries for minutes or reports a SQLAlchemy traceback)."""
    path = _sqlite_path(uri)
    if path is None or not path.exists():
        return
    head = b""
    if path.is_file():
        try:
            with open(path, "rb") as f:
                head = f.read(16)
        except OSError as err:
            raise ConfigError(f"MLflow store {path} cannot be read ({err.strerror or err})") from None
    if not path.is_file() or (head and head != b"SQLite format 3\x00"):
        what = "not a file" if not path.is_file() else "not an SQLite database"
        raise ConfigError(
            f"MLflow store {path} is {what}: point tracking.store_dir (or tracking.uri) at an "
            f"MLflow store, or move it away"
        )
    why = _schema_problem(path) if head else None
    if why:
        raise ConfigError(f"MLflow store {path} is not usable: {why}")


def _schema_problem(path: Path) -> str | None:
    """Why MLflow cannot use this database's schema (a newer MLflow wrote it), or None."""
    import sqlite3

    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None  # no tables yet: MLflow creates them
    scripts = ScriptDirectory.from_config(_get_alembic_config(f"sqlite:///{path}"))
    try:
        scripts.get_revision(row[0]) if row else None
    except Exception:
        return (
            f"its schema ({row[0]}) is newer than this MLflow {mlflow.__version__} knows: it was written by a "
            f"newer MLflow; install that version (and pin it) or use another store"
        )
    return None


def _unusable(uri: str, err: Exception) -> ConfigError:
    """The one line for a store MLflow refused (credentials, permissions, a read-only database, ...)."""
    code = getattr(err, "error_code", "")
    if code == "UNAUTHENTICATED":
        why = "it asks for credentials: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    elif code == "PERMISSION_DENIED":
        why = "these credentials may not do this (ask the server's admin for EDIT on the experiment)"
    else:
        why = (str(err).strip().splitlines() or [type(err).__name__])[0].removeprefix("(sqlite3.OperationalError) ")
    return ConfigError(f"MLflow store {safe_uri(uri)} is not usable: {why}")


def open_store(tracking: DictConfig) -> MlflowClient:
    """Point MLflow at the store (checked first: reachable, a database it can use) and return a client.
    A new SQLite store's tables are created under a lock: parallel jobs must not migrate it at once."""
    uri = store_uri(tracking)
    check_reachable(uri)
    check_sqlite(uri)
    use_store(uri)
    try:
        with _first_use_lock(uri):
            client = MlflowClient()
            client.search_experiments(max_results=1)
    except Exception as err:  # MlflowException, SQLAlchemy's errors
        raise _unusable(uri, err) from None
    return client


# Jobs fail at start, within seconds, when the store is down: MLflow's own client retries for minutes.
PROBE_TIMEOUT_S = 5.0
DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def check_reachable(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise ConfigError (one line naming the URI) unless the tracking server or database answers.

    http(s): GET ``<uri>/health`` (any answer but a gateway error counts: a proxy may guard it);
    a database URI with a host: a TCP connect to its port. Local stores (sqlite) need no probe.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    scheme = parts.scheme.split("+")[0].lower()
    safe = safe_uri(uri)
    hint = "start it, or point tracking.uri / MLFLOW_TRACKING_URI at a running one"
    if scheme in ("http", "https"):
        import requests

        try:
            status = requests.get(uri.rstrip("/") + "/health", timeout=timeout).status_code
            reason = f"a gateway answered HTTP {status}" if status in (502, 503, 504) else None
        except requests.RequestException as err:
            reason = "timed out" if isinstance(err, requests.Timeout) else "connection refused or no route"
        if reason:
            raise ConfigError(f"MLflow server {safe} is not reachable ({reason}, {timeout:g} s probe): {hint}")
    elif scheme in DB_PORTS and parts.hostname:
        import socket

        try:
            with socket.create_connection((parts.hostname, parts.port or DB_PORTS[scheme]), timeout=timeout):
                pass
        except OSError as err:
            raise ConfigError(f"MLflow database {safe} is not reachable ({err.strerror or err}): {hint}") from None


def use_store(uri: str) -> None:
    """Point this process's MLflow at ``uri``. MLflow also exports it as $MLFLOW_TRACKING_URI,
    which the configs read as the user's choice: put that variable back as it was, so the next job
    of an in-process sweep composes its own store."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
    # MLflow's async-logging thread otherwise waits in a 1 s queue poll that only then sees a
    # flush or end_run: up to a second of idle wait each time. Buffering makes it wait on the
    # stop event instead, so a flush returns once the writes are done (writes may lag by 1 s).
    os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "1")


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


def setup(tracking: DictConfig) -> str:
    """Point MLflow at the store and return the experiment's id, creating it when new; the store must
    take a write (a read-only database or a user without permission stops here, not mid-run).

    A local store gets an explicit artifact folder beside the database, so artifacts never land
    relative to the working directory; a server picks (or proxies) the artifact root itself.
    """
    client = open_store(tracking)
    if tracking.get("system_metrics_interval"):
        mlflow.set_system_metrics_sampling_interval(float(tracking.system_metrics_interval))
    uri = tracking_uri()
    try:
        with _quiet(logging.CRITICAL):
            experiment_id = _experiment(client, tracking, uri)
    except Exception as err:
        raise _unusable(uri, err) from None
    return experiment_id


def _experiment(client: MlflowClient, tracking: DictConfig, uri: str) -> str:
    """The experiment's id, created when new; an existing one gets a tag: a write, so a store that takes none
    stops here."""
    exp = client.get_experiment_by_name(tracking.experiment)
    if exp is not None:
        try:
            client.set_experiment_tag(exp.experiment_id, "sweeplab.last_used", time.strftime("%Y-%m-%dT%H:%M:%S"))
        except MlflowException as err:  # a parallel job wrote the same tag at that instant: the store takes writes
            if not _duplicate_key(err):
                raise
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:"):
        location = (Path(tracking.store_dir).expanduser().resolve() / "artifacts" / tracking.experiment).as_uri()
    try:
        return client.create_experiment(tracking.experiment, artifact_location=location)
    except MlflowException:  # created by a parallel job meanwhile
        return client.get_experiment_by_name(tracking.experiment).experiment_id


def find_experiment(tracking: DictConfig) -> str | None:
    """The id of ``tracking.experiment`` in the store, or None when the store has no such experiment."""
    client = open_store(tracking)
    try:
        exp = client.get_experiment_by_name(tracking.experiment)
    except Exception as err:
        raise _unusable(tracking_uri(), err) from None
    return exp.experiment_id if exp is not None else None


@contextmanager
def _first_use_lock(uri: str):
    """An exclusive file lock beside a SQLite store while MLflow creates or migrates its tables."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    with open(_sqlite_path(uri).with_suffix(".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# -- a run's lifecycle --------------------------------------------------------------------------
@contextmanager
def run(
    experiment_id: str,
    name: str | None = None,
    run_id: str | None = None,
    tags=None,
    parent_run_id: str | None = None,
    system_metrics: bool = False,
) -> Iterator[str]:
    """Start (or, with ``run_id``, reopen) the active run and yield its id; end it FINISHED, FAILED
    (the reason in the tag sweeplab.failure) or KILLED. An interrupt may carry a ``hint`` (how to
    continue), which goes into the failure tag. ``parent_run_id`` nests a new run under a sweep's
    parent run; ``system_metrics`` records CPU, memory (and GPU) use with MLflow's own monitor."""
    active = mlflow.start_run(
        run_id=run_id,
        experiment_id=None if run_id else experiment_id,
        run_name=_clean(name) if name else name,
        tags={k: _clean(v) for k, v in (tags or {}).items()},
        parent_run_id=None if run_id else parent_run_id,
        log_system_metrics=system_metrics,
    )
    status, reason = "FINISHED", None
    try:
        yield active.info.run_id
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM/SIGHUP (sweeplab.errors.Interrupted)
        how = f"interrupted ({err})" if str(err) else "interrupted (SIGINT)"
        status, reason = "KILLED", how + (f"; {err.hint}" if getattr(err, "hint", None) else "")
        raise
    except SystemExit as err:  # e.g. submitit stopping a job it has requeued: the requeued job resumes the run
        status, reason = "KILLED", f"the process was told to exit (code {err.code})"
        raise
    except BaseException as err:
        status, reason = "FAILED", f"{type(err).__name__}: {err}".splitlines()[0][:5000]
        raise
    finally:
        mlflow.flush_async_logging()  # the metrics still queued belong to this run
        if reason:
            mlflow.set_tag(FAILURE_TAG, reason)
        mlflow.end_run(status)


def create_run(experiment_id: str, name: str, tags: dict | None = None) -> str:
    """A run that is not the active one (a sweep's parent), left RUNNING until ``end_run``."""
    tags = {k: _clean(v) for k, v in (tags or {}).items()}
    return MlflowClient().create_run(experiment_id, run_name=_clean(name), tags=tags).info.run_id


def end_run(run_id: str, status: str = "FINISHED") -> None:
    MlflowClient().set_terminated(run_id, status)


def _current(run_id: str | None) -> str:
    return run_id or mlflow.active_run().info.run_id


# -- secrets ------------------------------------------------------------------------------------
_secrets: list[str] = []  # what protect() found; every text that goes through this door is masked
TEXT_FILES = {".yaml", ".yml", ".txt", ".log", ".md", ".csv", ".json", ".patch", ".ini", ".cfg"}


def protect(cfg: DictConfig) -> list[str]:
    """Find the secrets of ``cfg`` (credentials in URIs, e.g. tracking.uri, and the values of the keys
    listed in ``tracking.secret_keys``) and keep them out of MLflow and the logs: every param, tag,
    text and text file logged here is masked, and so is every log record of this process."""
    keys = list(cfg.tracking.get("secret_keys") or []) if "tracking" in cfg else []
    found = redact.secret_values(cfg, keys)
    _secrets[:] = sorted({*_secrets, *found}, key=len, reverse=True)
    redact.install_log_redaction(_secrets)
    if found:
        # MLflow prints each run's address, credentials included, straight to stdout: not with secrets about.
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        # Hydra wrote the command line into the job's folder before the task began.
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            hydra_dir = Path(HydraConfig.get().runtime.output_dir) / str(HydraConfig.get().output_subdir)
            for path in hydra_dir.glob("*.yaml"):
                path.write_text(_clean(path.read_text()))
    return found


def masked_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` without its secrets, still rerunnable (they are read from the environment again)."""
    keys = list(cfg.tracking.get("secret_keys") or []) if "tracking" in cfg else []
    return redact.mask_config(cfg, keys)


def _clean(text) -> str:
    return redact.redact(str(text), _secrets)


@contextmanager
def _clean_files(paths):
    """The files as they may be logged: text files copied with their secrets masked, others as they are."""
    with tempfile.TemporaryDirectory() as tmp:
        out = []
        for path in map(Path, paths):
            if path.suffix in TEXT_FILES and path.is_file():
                text = path.read_text(errors="replace")
                if _clean(text) != text:
                    path = Path(tmp) / str(len(out)) / path.name
                    path.parent.mkdir()
                    path.write_text(_clean(text))
            out.append(path)
        yield out


# -- logging ------------------------------------------------------------------------------------
def log_params(params: dict, run_id: str | None = None) -> None:
    """Params as strings (MLflow's client batches them)."""
    MlflowClient().log_batch(_current(run_id), params=[Param(k, _clean(v)[:6000]) for k, v in params.items()])


def log_metrics(metrics: dict, step: int = 0, run_id: str | None = None) -> None:
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
    MlflowClient().log_batch(_current(run_id), metrics=batch)


def log_series(key: str, values, run_id: str | None = None) -> None:
    """One metric over steps 0, 1, 2, ... (e.g. a loss curve)."""
    now = int(time.time() * 1000)
    MlflowClient().log_batch(_current(run_id), metrics=[Metric(key, float(v), now, s) for s, v in enumerate(values)])


def set_tags(tags: dict, run_id: str | None = None) -> None:
    MlflowClient().log_batch(_current(run_id), tags=[RunTag(k, _clean(v)) for k, v in tags.items()])


def log_text(text: str, artifact_file: str, run_id: str | None = None) -> None:
    MlflowClient().log_text(_current(run_id), _clean(text), artifact_file)


def log_files(paths, folder: str | None = None, run_id: str | None = None) -> None:
    client, run_id = MlflowClient(), _current(run_id)
    with _clean_files(paths) as clean:
        for path in clean:
            client.log_artifact(run_id, str(path), folder)


def log_folder(path: str | Path, folder: str | None = None, run_id: str | None = None) -> None:
    """Every file below ``path``, under ``folder`` (text files masked as in log_files)."""
    root = Path(path)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        sub = file.parent.relative_to(root).as_posix()
        log_files([file], "/".join(x for x in (folder, sub) if x and x != ".") or None, run_id)


def log_figure(figure, artifact_file: str, run_id: str | None = None) -> None:
    """A matplotlib figure as a PNG artifact (the figure is closed)."""
    from sweeplab import plots

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        plots.save(figure, path)
        log_files([path], str(Path(artifact_file).parent) if "/" in artifact_file else None, run_id)


class MlflowLogger(Callback):
    """Logs each epoch's metrics with ``step=epoch``, in one request per epoch, in the background
    (MLflow's async logging: the next epoch never waits on the store). A write the store refused (a
    server out of database connections answers HTTP 400, which MLflow's client does not retry) is
    written again, synchronously, when it is found: at the next epoch or at the end of the fit."""

    def __init__(self, run_id: str):
        self.client, self.run_id = MlflowClient(), run_id
        self.pending: list = []  # (operation, batch) of writes not yet known to have landed

    def on_fit_start(self, trainer) -> None:
        """On resume: log the checkpointed epochs a kill kept from reaching MLflow (never twice)."""
        if not trainer.history:  # a new run: nothing to look up
            return
        logged = {m.step for m in self.client.get_metric_history(self.run_id, "test_acc")}
        for metrics in trainer.history:
            if metrics["epoch"] not in logged:
                self.on_epoch_end(trainer, metrics)

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        now = int(time.time() * 1000)
        step = metrics["epoch"]
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if k != "epoch"]
        self._settle(wait=False)
        # What a crash loses before it is written, a resume logs again from the checkpoint.
        self.pending.append((self.client.log_batch(self.run_id, metrics=batch, synchronous=False), batch))

    def on_fit_end(self, trainer) -> None:
        mlflow.flush_async_logging()
        self._settle(wait=True)
        log_metrics(trainer.summary(), run_id=self.run_id)

    def _settle(self, wait: bool) -> None:
        """Check the background writes that are done (all of them with ``wait``); redo refused ones."""
        still = []
        for operation, batch in self.pending:
            if not wait and not all(f.done() for f in operation._operation_futures):
                still.append((operation, batch))
                continue
            try:
                operation.wait()
            except MlflowException as err:
                log.warning(
                    f"the store refused an epoch's metrics ({str(err).splitlines()[0][:200]}); writing them again"
                )
                self.client.log_batch(self.run_id, metrics=batch)  # synchronous: fails the run if it fails again
        self.pending = still


# -- finding runs -------------------------------------------------------------------------------
def _search(experiment_id: str, query: str = "", order_by=None, max_results: int = 10_000) -> list[Run]:
    runs = MlflowClient().search_runs([experiment_id], query, order_by=order_by, max_results=max_results)
    return [_record(r) for r in runs]


def get_run(run_id: str) -> Run:
    """The run ``run_id`` (ConfigError naming the store when there is none)."""
    try:
        return _record(MlflowClient().get_run(str(run_id)))
    except MlflowException:
        raise ConfigError(f"no run {run_id} in the MLflow store {tracking_uri()}") from None


def has_runs(experiment_id: str) -> bool:
    return bool(_search(experiment_id, max_results=1))


def all_runs(experiment_id: str) -> list[Run]:
    """Every run of an experiment, oldest first."""
    return _search(experiment_id, order_by=["attributes.start_time ASC"])


def sweep_runs(experiment_id: str, sweep_id: str) -> list[Run]:
    """All runs of one sweep, oldest first."""
    return _search(experiment_id, f"tags.`{SWEEP_TAG}` = '{sweep_id}'", ["attributes.start_time ASC"])


def sweep_parent(experiment_id: str, sweep_id: str) -> Run | None:
    """The parent run of a sweep (None for a sweep from before parent runs)."""
    query = f"tags.`{SWEEP_TAG}` = '{sweep_id}' and tags.`{KIND_TAG}` = 'sweep'"
    runs = _search(experiment_id, query, ["attributes.start_time DESC"], 1)
    return runs[0] if runs else None


def latest_sweep(experiment_id: str) -> str | None:
    """The sweep id of the most recently started run that belongs to a sweep (None if none does)."""
    runs = _search(experiment_id, f"tags.`{SWEEP_TAG}` LIKE '%'", ["attributes.start_time DESC"], 1)
    return runs[0].tags[SWEEP_TAG] if runs else None


def best_run(experiment_id: str, metric: str, direction: str = "max", sweep_id: str | None = None) -> Run | None:
    """The FINISHED run with the best ``metric`` (``direction`` max or min), optionally of one sweep.

    Runs that never logged the metric are skipped; ties go to the newest run. None when nothing fits.
    """
    query = "attributes.status = 'FINISHED'"
    if sweep_id:
        query += f" and tags.`{SWEEP_TAG}` = '{sweep_id}'"
    order = "DESC" if direction == "max" else "ASC"
    runs = _search(experiment_id, query, [f"metrics.`{metric}` {order}", "attributes.start_time DESC"])
    return next((r for r in runs if metric in r.metrics), None)


def metric_history(run_id: str, keys) -> list[dict]:
    """Per-epoch metrics as the engine's history: ``[{"epoch": 1, "test_acc": ..., ...}, ...]``."""
    client, by_step = MlflowClient(), {}
    for key in keys:
        for m in client.get_metric_history(run_id, key):
            by_step.setdefault(m.step, {"epoch": m.step})[key] = m.value
    return [by_step[s] for s in sorted(by_step)]


def metric_steps(run_id: str, key: str) -> set[int]:
    return {m.step for m in MlflowClient().get_metric_history(run_id, key)}


# -- a run's files ------------------------------------------------------------------------------
def artifact_names(run_id: str, folder: str) -> set[str]:
    """The names of the files in a run's artifact ``folder`` (empty when there is none)."""
    try:
        return {Path(f.path).name for f in MlflowClient().list_artifacts(run_id, folder)}
    except (MlflowException, OSError):
        return set()


def download(run_id: str, artifact_path: str, dst: str | Path) -> Path:
    """A run's artifact, downloaded into ``dst`` (ConfigError when it cannot be)."""
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dst)))
    except (MlflowException, OSError) as err:
        raise ConfigError(f"cannot download {artifact_path} of run {run_id}: {str(err).splitlines()[0]}") from None


def saved_config(run_id: str) -> DictConfig:
    """The composed config a run saved (``config/config.yaml``), without its defaults list."""
    get_run(run_id)
    if "config.yaml" not in artifact_names(run_id, "config"):
        raise ConfigError(f"run {run_id} has no saved config (config/config.yaml)")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = OmegaConf.load(download(run_id, "config/config.yaml", tmp))
    cfg.pop("defaults", None)
    return cfg


# -- where a run comes from ---------------------------------------------------------------------
def flatten(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as ``a.b.c -> value`` strings (MLflow params)."""
    out: dict[str, str] = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = str(node)[:6000]

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def git_state(root: Path | None = None) -> dict:
    """Commit, dirty flag and diff of the repository the code runs from (empty outside git)."""
    root = root or repo_root()

    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)

    try:
        head = git("rev-parse", "HEAD")
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if head.returncode:
        return {}
    diff = git("diff", "HEAD").stdout
    untracked = git("ls-files", "--others", "--exclude-standard").stdout.strip()
    return {"commit": head.stdout.strip(), "dirty": bool(diff.strip() or untracked), "diff": diff}


@functools.cache
def environment() -> dict[str, str]:
    """Versions, host and device (package versions from their metadata: importing torchvision takes seconds)."""
    from importlib.metadata import version

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    versions = {
        name: version(dist)
        for name, dist in (("torchvision", "torchvision"), ("hydra", "hydra-core"), ("mlflow", "mlflow"))
    }
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        **versions,
        "host": platform.node(),
        "device_name": device,
        "cpu_count": str(os.cpu_count()),
    }


def tags_for(cfg: DictConfig, overrides: list[str], sweep_id: str | None, git: dict) -> dict[str, str]:
    """Where a run comes from: overrides, seed, sweep, git commit, versions and device."""
    tags = {"sweeplab.overrides": " ".join(overrides) or "(defaults)", "sweeplab.seed": str(cfg.trainer.seed)}
    if sweep_id:
        tags[SWEEP_TAG] = sweep_id
    if git:
        tags.update({"mlflow.source.git.commit": git["commit"], "sweeplab.git_dirty": str(git["dirty"])})
    tags.update({f"sweeplab.env.{k}": v for k, v in environment().items()})
    tags["mlflow.source.name"] = Path(sys.argv[0]).name
    return tags


# -- data sets ----------------------------------------------------------------------------------
MAX_DIGEST = 36  # MLflow's limit for a dataset digest


def log_dataset(name: str, images, labels, sha256: str, source: str, context: str, tags: dict | None = None) -> None:
    """A data set as an MLflow dataset input of the active run (the UI's Datasets column): its name,
    digest (our sha256, cut to MLflow's 36 characters; the whole one is a tag), source (a file or
    a download URL), and its shape and size from the arrays (numpy, not copied or hashed again)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    with _quiet():  # MLflow registers its local-file source twice and says so
        source_obj = resolve_dataset_source(source)
    dataset = mlflow.data.from_numpy(images, targets=labels, name=name, digest=sha256[:MAX_DIGEST], source=source_obj)
    input_tags = {"sha256": sha256, **(tags or {})}
    try:
        mlflow.log_input(dataset, context=context, tags=input_tags)
    except MlflowException as err:
        # Parallel jobs of a sweep on a server with a PostgreSQL store: both find the dataset new and
        # insert it, the second is refused (duplicate key). Now it exists: link it again.
        if not _duplicate_key(err):
            raise
        mlflow.log_input(dataset, context=context, tags=input_tags)


def _duplicate_key(err: Exception) -> bool:
    """A write refused because a parallel job wrote the same row first (PostgreSQL, MySQL, SQLite)."""
    text = str(err).lower()
    return "unique" in text or "duplicate" in text


@contextmanager
def _quiet(level: int = logging.ERROR):
    """MLflow's own logger below ``level``, and Python's warnings, silenced while an MLflow call runs:
    what it says there (a source registered twice, pickle's usual caution, the traceback of an error
    we report in one line) is about MLflow, not about the user's run."""
    import warnings

    mlflow_log = logging.getLogger("mlflow")
    before = mlflow_log.level
    mlflow_log.setLevel(level)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        mlflow_log.setLevel(before)


# -- models -------------------------------------------------------------------------------------
PINNED = ("torch", "torchvision", "numpy", "cloudpickle", "mlflow")  # what loading a logged model needs


def pinned_requirements(names=PINNED) -> list[str]:
    """``name==version`` for each package a logged model needs, from the project's requirements.lock
    (the versions it is tested with), else from what is installed."""
    from importlib.metadata import PackageNotFoundError, version

    pins = {}
    lock = repo_root() / "requirements.lock"
    if lock.is_file():
        for line in lock.read_text().splitlines():
            name, sep, pinned = line.split("#")[0].strip().partition("==")
            if sep:
                pins[name.lower()] = pinned.strip()
    out = []
    for name in names:
        try:
            out.append(f"{name}=={pins.get(name) or version(name)}")
        except PackageNotFoundError:
            continue
    return out


def log_model(model, input_example, name: str = MODEL_NAME) -> str:
    """``model`` (a torch module) as an MLflow model of the active run, in the pytorch flavour with
    a signature and ``input_example`` (numpy); returns its URI (``models:/m-...``). Loading it
    needs this package installed (the model's classes are pickled by reference)."""
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    with torch.inference_mode():
        output = model(torch.as_tensor(input_example)).cpu().numpy()
    with _quiet():  # pickle-format models warn that unpickling runs code
        info = mlflow.pytorch.log_model(
            model,
            name=name,
            signature=infer_signature(input_example, output),
            input_example=input_example,
            pip_requirements=pinned_requirements(),
            serialization_format="pickle",  # the default (pt2) would load back as a GraphModule, not our class
        )
    return info.model_uri


def model_uri(run_id: str, name: str = MODEL_NAME) -> str | None:
    """The URI of the model a run logged under ``name`` (the last one), or None."""
    outputs = MlflowClient().get_run(run_id).outputs
    ids = [o.model_id for o in (outputs.model_outputs if outputs else [])]
    for model_id in reversed(ids):
        if MlflowClient().get_logged_model(model_id).name == name:
            return f"models:/{model_id}"
    return None


def model_run(uri: str) -> Run:
    """The run that logged the model at ``uri`` (``models:/<name>@<alias>``, ``models:/<name>/<version>``,
    ``models:/m-...`` or ``runs:/<run id>/...``); ConfigError when there is none."""
    client = MlflowClient()
    try:
        if uri.startswith("runs:/"):
            return get_run(uri[len("runs:/") :].split("/")[0])
        ref = uri.removeprefix("models:/")
        if ref.startswith("m-"):
            return get_run(client.get_logged_model(ref).source_run_id)
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, number = ref.rsplit("/", 1)
            version = client.get_model_version(name, number)
        return get_run(version.run_id)
    except (MlflowException, ValueError) as err:
        raise ConfigError(f"model {uri}: {str(err).splitlines()[0]}") from None


def load_model(uri: str, device: str = "cpu"):
    """The torch module logged at ``uri`` (ConfigError naming the URI when it cannot be loaded)."""
    import mlflow.pytorch

    try:
        with _quiet():
            return mlflow.pytorch.load_model(uri, map_location=device)
    except Exception as err:  # a missing, truncated or foreign model file
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot load the model {uri}: {text}") from None


def register_best(model_name: str, run: Run, metric: str, direction: str = "max") -> tuple[int, bool]:
    """Register ``run``'s model as a new version of ``model_name``; move the alias ``best`` to it only
    when its ``metric`` beats the version that holds the alias now. Returns (version, alias moved)."""
    uri = model_uri(run.run_id)
    if uri is None:
        raise ConfigError(f"run {run.run_id} logged no model to register")
    client = MlflowClient()
    value = run.metrics.get(metric)
    with _quiet():
        version = mlflow.register_model(uri, model_name, tags={metric: str(value)}).version
    try:
        holder = client.get_model_version_by_alias(model_name, BEST_ALIAS)
        held = client.get_run(holder.run_id).data.metrics.get(metric)
    except MlflowException:  # no alias yet
        held = None
    better = held is None or (value is not None and (value > held if direction == "max" else value < held))
    if better:
        client.set_registered_model_alias(model_name, BEST_ALIAS, version)
    return int(version), better


def model_alias(model_name: str, alias: str = BEST_ALIAS) -> tuple[int, str] | None:
    """(version, run id) that holds ``alias`` of ``model_name``, or None."""
    try:
        version = MlflowClient().get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None
    return int(version.version), version.run_id
