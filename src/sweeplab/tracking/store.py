"""The store: where MLflow records go (a SQLite file under mlruns/ or a server), checked before any
run exists, and the experiment the runs go into."""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import mlflow
from filelock import FileLock
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig
from sqlalchemy.engine import make_url

from sweeplab.errors import ConfigError
from sweeplab.paths import store_folder

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in the console log


def store_uri(tracking: DictConfig) -> str:
    """``tracking.uri`` (or $MLFLOW_TRACKING_URI), else a SQLite database in ``tracking.store_dir``."""
    if tracking.get("uri"):
        return str(tracking.uri)
    return f"sqlite:///{store_folder(tracking) / 'mlflow.db'}"


def safe_uri(uri: str) -> str:
    """``uri`` without the password it may carry (for messages)."""
    try:
        return make_url(uri).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses (e.g. "databricks"): nothing to hide
        return uri


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (also ``sqlite:///file:<path>?mode=ro``)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(make_url(uri).database.removeprefix("file:"))


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


def mlflow_schema_scripts(uri: str):
    """Alembic's scripts of the schema revisions this MLflow knows. MLflow has no public API for them:
    this is the one call of a private function (``mlflow.store.db.utils._get_alembic_config``), and
    tests/test_store.py fails loudly when an MLflow upgrade moves or changes it."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    return ScriptDirectory.from_config(_get_alembic_config(uri))


def _schema_problem(path: Path) -> str | None:
    """Why MLflow cannot use this database's schema (a newer MLflow wrote it), or None."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None  # no tables yet: MLflow creates them
    if not row:
        return None
    try:
        mlflow_schema_scripts(f"sqlite:///{path}").get_revision(row[0])
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
        with quiet(logging.CRITICAL):
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
            if not duplicate_key(err):
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


def _first_use_lock(uri: str):
    """An exclusive file lock beside a SQLite store while MLflow creates or migrates its tables."""
    path = _sqlite_path(uri)
    return FileLock(path.with_suffix(".lock")) if path is not None else nullcontext()


def duplicate_key(err: Exception) -> bool:
    """A write refused because a parallel job wrote the same row first (PostgreSQL, MySQL, SQLite)."""
    text = str(err).lower()
    return "unique" in text or "duplicate" in text


@contextmanager
def quiet(level: int = logging.ERROR):
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
