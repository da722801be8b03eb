"""Everything MLflow: the store, a run's lifecycle, params/metrics/artifacts, run search."""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from sweeplab.engine import Callback
from sweeplab.settings import ConfigError, repo_root

log = logging.getLogger(__name__)

SWEEP_TAG = "sweeplab.sweep"
FAILURE_TAG = "sweeplab.failure"


def store_uri(tcfg: DictConfig) -> str:
    """``tracking.uri`` (or $MLFLOW_TRACKING_URI), else a SQLite database in ``tracking.store_dir``."""
    if tcfg.get("uri"):
        return str(tcfg.uri)
    store = Path(tcfg.store_dir).expanduser().resolve()
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


def setup(tcfg: DictConfig) -> str:
    """Point MLflow at the store and return the experiment's id, creating it when new.

    A local store gets an explicit artifact folder beside the database, so artifacts never land
    relative to the working directory; a server picks (or proxies) the artifact root itself.
    """
    uri = store_uri(tcfg)
    check_reachable(uri)
    use_store(uri)
    # MLflow's async-logging thread otherwise waits in a 1 s queue poll that only then sees a
    # flush or end_run: up to a second of idle wait each time. Buffering makes it wait on the
    # stop event instead, so a flush returns once the writes are done (writes may lag by 1 s).
    os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "1")
    try:
        with _first_use_lock(uri):  # parallel jobs must not create the tables at the same time
            client = MlflowClient()
            client.search_experiments(max_results=1)
        exp = client.get_experiment_by_name(tcfg.experiment)
        if exp is not None:
            return exp.experiment_id
        location = None
        if uri.startswith("sqlite:"):
            location = (Path(tcfg.store_dir).expanduser().resolve() / "artifacts" / tcfg.experiment).as_uri()
        try:
            return client.create_experiment(tcfg.experiment, artifact_location=location)
        except mlflow.exceptions.MlflowException:  # created by a parallel job meanwhile
            return client.get_experiment_by_name(tcfg.experiment).experiment_id
    except mlflow.exceptions.MlflowException as err:
        raise ConfigError(f"MLflow store {uri} is not usable: {str(err).splitlines()[0]}") from None


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


def saved_config(run_id: str) -> DictConfig:
    """The composed config a run saved (``config/config.yaml``), without its defaults list."""
    client = MlflowClient()
    try:
        client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ConfigError(f"no run {run_id} in the MLflow store {mlflow.get_tracking_uri()}") from None
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config/config.yaml")
    except (mlflow.exceptions.MlflowException, OSError):
        raise ConfigError(f"run {run_id} has no saved config (config/config.yaml)") from None
    cfg = OmegaConf.load(path)
    cfg.pop("defaults", None)
    return cfg


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


@contextmanager
def active_run(experiment_id: str, run_name: str | None = None, run_id: str | None = None, tags=None):
    """Start (or reopen, for a resume) a run; end it FINISHED, FAILED (reason in a tag) or KILLED."""
    run = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id, run_name=run_name, tags=tags)
    status, reason = "FINISHED", None
    try:
        yield run
    except KeyboardInterrupt:
        status, reason = "KILLED", f"interrupted (Ctrl-C); resume with train.py resume={run.info.run_id}"
        raise
    except BaseException as err:
        status, reason = "FAILED", f"{type(err).__name__}: {err}".splitlines()[0][:5000]
        raise
    finally:
        mlflow.flush_async_logging()  # the metrics still queued belong to this run
        if reason:
            mlflow.set_tag(FAILURE_TAG, reason)
        mlflow.end_run(status)


def log_params(params: dict[str, str]) -> None:
    client, run_id = MlflowClient(), mlflow.active_run().info.run_id
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=items[i : i + 100])


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
        summary = trainer.summary()
        if summary:
            self.client.log_batch(
                self.run_id,
                metrics=[Metric(k, float(v), int(time.time() * 1000), 0) for k, v in summary.items() if v is not None],
            )


def sweep_runs(experiment_id: str, sweep_id: str, statuses=None) -> list:
    """All runs of one sweep, oldest first."""
    query = f"tags.`{SWEEP_TAG}` = '{sweep_id}'"
    runs = MlflowClient().search_runs(
        [experiment_id], query, order_by=["attributes.start_time ASC"], max_results=10_000
    )
    return [r for r in runs if statuses is None or r.info.status in statuses]


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


def best_run(experiment_id: str, metric: str, direction: str = "max", sweep_id: str | None = None):
    """The FINISHED run with the best ``metric`` (``direction`` max or min), optionally of one sweep.

    Runs that never logged the metric are skipped; ties go to the newest run. None when nothing fits.
    """
    query = "attributes.status = 'FINISHED'"
    if sweep_id:
        query += f" and tags.`{SWEEP_TAG}` = '{sweep_id}'"
    order = "DESC" if direction == "max" else "ASC"
    runs = MlflowClient().search_runs(
        [experiment_id],
        query,
        max_results=10_000,
        order_by=[f"metrics.`{metric}` {order}", "attributes.start_time DESC"],
    )
    return next((r for r in runs if metric in r.data.metrics), None)


def latest_sweep(experiment_id: str) -> str | None:
    """The sweep id of the most recently started run that belongs to a sweep (None if none does)."""
    runs = MlflowClient().search_runs(
        [experiment_id], f"tags.`{SWEEP_TAG}` LIKE '%'", max_results=1, order_by=["attributes.start_time DESC"]
    )
    return runs[0].data.tags[SWEEP_TAG] if runs else None
