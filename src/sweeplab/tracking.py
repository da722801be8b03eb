"""The one door to MLflow: the store, a run's lifecycle, params / metrics / files / figures, run search
and a run's files. No other module imports mlflow; they speak in plain values (run ids, dicts, paths,
figures) and ``Run`` records."""

from __future__ import annotations

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

from sweeplab.engine import Callback
from sweeplab.errors import ConfigError
from sweeplab.settings import repo_root

log = logging.getLogger(__name__)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in the console log

SWEEP_TAG = "sweeplab.sweep"
FAILURE_TAG = "sweeplab.failure"
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI


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
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


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
    safe = uri.replace(f":{parts.password}@", ":***@") if parts.password else uri
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
    """Point MLflow at the store and return the experiment's id, creating it when new.

    A local store gets an explicit artifact folder beside the database, so artifacts never land
    relative to the working directory; a server picks (or proxies) the artifact root itself.
    """
    uri = store_uri(tracking)
    check_reachable(uri)
    use_store(uri)
    try:
        with _first_use_lock(uri):  # parallel jobs must not create the tables at the same time
            client = MlflowClient()
            client.search_experiments(max_results=1)
        exp = client.get_experiment_by_name(tracking.experiment)
        if exp is not None:
            return exp.experiment_id
        location = None
        if uri.startswith("sqlite:"):
            location = (Path(tracking.store_dir).expanduser().resolve() / "artifacts" / tracking.experiment).as_uri()
        try:
            return client.create_experiment(tracking.experiment, artifact_location=location)
        except MlflowException:  # created by a parallel job meanwhile
            return client.get_experiment_by_name(tracking.experiment).experiment_id
    except MlflowException as err:
        raise ConfigError(f"MLflow store {uri} is not usable: {str(err).splitlines()[0]}") from None


def find_experiment(tracking: DictConfig) -> str | None:
    """The id of ``tracking.experiment`` in the store, or None when the store has no such experiment."""
    uri = store_uri(tracking)
    check_reachable(uri)
    use_store(uri)
    try:
        exp = MlflowClient().get_experiment_by_name(tracking.experiment)
    except MlflowException as err:
        raise ConfigError(f"MLflow store {uri} is not usable: {str(err).splitlines()[0]}") from None
    return exp.experiment_id if exp is not None else None


@contextmanager
def _first_use_lock(uri: str):
    """An exclusive file lock beside a SQLite store while MLflow creates or migrates its tables."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    with open(Path(uri[len("sqlite:///") :]).with_suffix(".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# -- a run's lifecycle --------------------------------------------------------------------------
@contextmanager
def run(experiment_id: str, name: str | None = None, run_id: str | None = None, tags=None) -> Iterator[str]:
    """Start (or, with ``run_id``, reopen) the active run and yield its id; end it FINISHED, FAILED
    (the reason in the tag sweeplab.failure) or KILLED. An interrupt may carry a ``hint`` (how to
    continue), which goes into the failure tag."""
    active = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id, run_name=name, tags=tags)
    status, reason = "FINISHED", None
    try:
        yield active.info.run_id
    except KeyboardInterrupt as err:
        status, reason = "KILLED", "interrupted" + (f"; {err.hint}" if getattr(err, "hint", None) else "")
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
    """A run that is not the active one (e.g. a report's), left RUNNING until ``end_run``."""
    return MlflowClient().create_run(experiment_id, run_name=name, tags=tags).info.run_id


def end_run(run_id: str, status: str = "FINISHED") -> None:
    MlflowClient().set_terminated(run_id, status)


def _current(run_id: str | None) -> str:
    return run_id or mlflow.active_run().info.run_id


# -- logging ------------------------------------------------------------------------------------
def log_params(params: dict, run_id: str | None = None) -> None:
    """Params as strings (MLflow's client batches them)."""
    MlflowClient().log_batch(_current(run_id), params=[Param(k, str(v)[:6000]) for k, v in params.items()])


def log_metrics(metrics: dict, step: int = 0, run_id: str | None = None) -> None:
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
    MlflowClient().log_batch(_current(run_id), metrics=batch)


def log_series(key: str, values, run_id: str | None = None) -> None:
    """One metric over steps 0, 1, 2, ... (e.g. a loss curve)."""
    now = int(time.time() * 1000)
    MlflowClient().log_batch(_current(run_id), metrics=[Metric(key, float(v), now, s) for s, v in enumerate(values)])


def set_tags(tags: dict, run_id: str | None = None) -> None:
    MlflowClient().log_batch(_current(run_id), tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_text(text: str, artifact_file: str, run_id: str | None = None) -> None:
    MlflowClient().log_text(_current(run_id), text, artifact_file)


def log_files(paths, folder: str | None = None, run_id: str | None = None) -> None:
    client, run_id = MlflowClient(), _current(run_id)
    for path in paths:
        client.log_artifact(run_id, str(path), folder)


def log_folder(path: str | Path, folder: str | None = None, run_id: str | None = None) -> None:
    MlflowClient().log_artifacts(_current(run_id), str(path), folder)


def log_figure(figure, artifact_file: str, run_id: str | None = None) -> None:
    """A matplotlib figure as a PNG artifact (the figure is closed)."""
    from sweeplab import plots

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        plots.save(figure, path)
        log_files([path], str(Path(artifact_file).parent) if "/" in artifact_file else None, run_id)


class MlflowLogger(Callback):
    """Logs each epoch's metrics with ``step=epoch``, in one request per epoch."""

    def __init__(self, run_id: str):
        self.client, self.run_id = MlflowClient(), run_id

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
        # MLflow's async logging keeps the next epoch from waiting on the store; what a crash
        # loses before it is written, the resume above logs again from the checkpoint.
        self.client.log_batch(self.run_id, metrics=batch, synchronous=False)

    def on_fit_end(self, trainer) -> None:
        mlflow.flush_async_logging()
        log_metrics(trainer.summary(), run_id=self.run_id)


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


def sweep_runs(experiment_id: str, sweep_id: str) -> list[Run]:
    """All runs of one sweep, oldest first."""
    return _search(experiment_id, f"tags.`{SWEEP_TAG}` = '{sweep_id}'", ["attributes.start_time ASC"])


def runs_tagged(experiment_id: str, key: str, value: str) -> list[Run]:
    """Runs whose tag ``key`` is ``value``, newest first."""
    return _search(experiment_id, f"tags.`{key}` = '{value}'", ["attributes.start_time DESC"])


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


def environment() -> dict[str, str]:
    import hydra
    import torch
    import torchvision

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "hydra": hydra.__version__,
        "mlflow": mlflow.__version__,
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
