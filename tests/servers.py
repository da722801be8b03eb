"""Servers for tests and benchmarks, started on 127.0.0.1 and always stopped.

- ``start_mlflow(command, backend, folder)`` and ``wait_until_up(started)``: ``mlflow server`` or
  ``mlflow ui`` on a free port, running only what a test uses (one uvicorn worker, no job runner).
- ``mlflow_server(backend, folder)``: ``mlflow server`` on a free port with proxied artifacts
  (``--serve-artifacts``, stored in ``folder/artifacts``), any backend store URI; yields its ``http://`` URI.
- ``auth_server()``: the same with MLflow's basic authentication (``--app-name basic-auth``) over a
  SQLite store in a temp folder; yields ``AuthServer(uri, username, password)`` of its admin user.
- ``start_postgres()``: a private PostgreSQL cluster in a temp folder (the system's binaries,
  Debian's /usr/lib/postgresql/*/bin: .ci/install-postgres.sh); returns its URI and a stop function.

An MLflow server runs in its own session and the whole process group is stopped at the end (uvicorn
starts worker processes of its own). A client authenticates with the standard variables::

    with auth_server() as (uri, user, password):
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        MlflowClient(uri).create_experiment("x")

Without them every API call is answered 401 (``MlflowException`` with error code UNAUTHENTICATED).
Starting ``auth_server()`` takes about 15 s on the 2-core development machine (measured 15-22 s,
2026-11-27): ~6 s for the ``mlflow server`` command's imports, ~5 s creating and migrating the
SQLite store and the users' database and creating the admin, ~6 s for uvicorn's worker to import
the app. Start one per module, not per test.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from support import _shared, free_port, new_store, stop_process_group

FAST_HASH = Path(__file__).resolve().parent / "fast_hash"
# What a server started here must not inherit from the caller's shell.
_CLIENT_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def _pg_bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name or 0))
    return Path(dirs[-1]) if dirs else None


def start_postgres() -> tuple[str, callable]:
    """Start PostgreSQL; return (SQLAlchemy URI of an empty database, stop function). Raises RuntimeError."""
    try:
        import psycopg  # noqa: F401  (SQLAlchemy 2.1's driver for postgresql:// URIs)
    except ImportError:
        raise RuntimeError("psycopg is not installed (pip install -r requirements.txt)") from None
    bindir = _pg_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        raise RuntimeError("PostgreSQL is not installed (no initdb/pg_ctl; bash .ci/install-postgres.sh installs it)")
    base = Path(tempfile.mkdtemp(prefix="sweeplab-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as an unprivileged user
        user = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
        runuser = shutil.which("runuser")
        if user is None or runuser is None:
            raise RuntimeError("running as root, and no 'postgres'/'nobody' user or runuser to drop to")
        entry = pwd.getpwnam(user)
        os.chown(base, entry.pw_uid, entry.pw_gid)
        as_user = [runuser, "-u", user, "--"]
    port, data, log = free_port(), base / "data", base / "server.log"

    def run(*cmd, timeout=60):
        res = subprocess.run([*as_user, *map(str, cmd)], capture_output=True, text=True, timeout=timeout, cwd=base)
        if res.returncode:
            tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["?"]
            raise RuntimeError(f"{Path(str(cmd[0])).name} failed: {tail[0]}")

    def stop():
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=30,
            cwd=base,
        )
        shutil.rmtree(base, ignore_errors=True)

    try:
        run(bindir / "initdb", "-D", data, "-U", "mlflow", "--auth=trust", "-E", "UTF8", "--no-sync")
        opts = f"-h 127.0.0.1 -p {port} -k {base} -c fsync=off -c full_page_writes=off"
        run(bindir / "pg_ctl", "-D", data, "-o", opts, "-l", log, "-w", "-t", "60", "start", timeout=90)
        run(bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "mlflow", "mlflow")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
        stop()
        raise RuntimeError(str(err)) from None
    return f"postgresql://mlflow@127.0.0.1:{port}/mlflow", stop


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


class AuthServer(NamedTuple):
    uri: str
    username: str  # the admin user
    password: str


class Started(NamedTuple):
    proc: subprocess.Popen
    uri: str
    log: Path  # its console


def start_mlflow(
    command: str, backend: str, folder: Path, *options: str, workers: int = 1, env: dict | None = None
) -> Started:
    """Start ``mlflow <command>`` (``server`` or ``ui``) over ``backend`` on a free port of 127.0.0.1, in
    its own session and in ``folder`` (its console goes to ``folder/server.log``), and return at once
    (``wait_until_up`` waits for it). It runs only what a test uses: ``workers`` uvicorn workers and no
    background job runner (by default 4 workers and, over a SQL store, 8 job processes: about 60 s of
    CPU on the 2-core development machine), and none of the caller's tracking variables."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", command, "--backend-store-uri", backend, "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--workers", str(workers), *options]
    server_env = {k: v for k, v in os.environ.items() if k not in _CLIENT_VARS}
    server_env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **(env or {}))
    log = folder / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=server_env, start_new_session=True, cwd=folder
        )
    return Started(proc, f"http://127.0.0.1:{port}", log)


def wait_until_up(server: Started, timeout: float = 150) -> None:
    """Return once the server's /health answers 200; RuntimeError with its console's tail if it exits
    first or ``timeout`` s pass."""
    import requests

    deadline = time.monotonic() + timeout
    while True:
        code = server.proc.poll()
        if code is not None or time.monotonic() > deadline:
            why = f"exited with code {code}" if code is not None else f"{timeout:g} s passed"
            command = " ".join(server.proc.args[2:4])  # mlflow server / mlflow ui
            raise RuntimeError(f"{command} on {server.uri} did not come up ({why}):\n{server.log.read_text()[-2000:]}")
        try:
            if requests.get(server.uri + "/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)


@contextmanager
def mlflow_server(
    backend: str,
    folder: Path,
    *,
    app_name: str | None = None,
    workers: int = 1,
    env: dict | None = None,
    timeout: float = 150,
) -> Iterator[str]:
    """Run ``mlflow server`` with ``backend`` as its store and artifacts under ``folder/artifacts``;
    yield its URI once ``/health`` answers 200. The server's console goes to ``folder/server.log``;
    a server that does not come up within ``timeout`` s raises RuntimeError with that log's tail."""
    options = ["--serve-artifacts", "--artifacts-destination", str(Path(folder) / "artifacts")]
    options += ["--app-name", app_name] if app_name else []
    server = start_mlflow("server", backend, folder, *options, workers=workers, env=env)
    try:
        wait_until_up(server, timeout)
        yield server.uri
    finally:
        stop_process_group(server.proc, timeout=10)


@contextmanager
def auth_server(folder: Path | None = None, *, workers: int = 1, timeout: float = 150) -> Iterator[AuthServer]:
    """An MLflow server with basic authentication over a fresh SQLite store (in ``folder``, or a
    temp folder removed afterwards); yields ``AuthServer(uri, username, password)`` of its admin.

    The auth settings go into ``folder/basic_auth.ini`` (MLFLOW_AUTH_CONFIG_PATH): the users'
    database at an absolute path in ``folder``, ``default_permission = READ``, and an admin with a
    random 24-character password (MLflow refuses one under 12 characters, and its old default).
    MLFLOW_FLASK_SERVER_SECRET_KEY (the auth app's CSRF key) is random too. Passwords are hashed
    with one PBKDF2 round (fast_hash/sitecustomize.py), not scrypt: 0.015 s per request instead of 0.5 s.
    """
    with tempfile.TemporaryDirectory(prefix="sweeplab-auth-") as tmp:
        base = Path(folder) if folder is not None else Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        username, password = "sweeplab-admin", secrets.token_urlsafe(18)
        ini = base / "basic_auth.ini"
        ini.write_text(
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = sqlite:///{(base / 'basic_auth.db').resolve()}\n"
            f"admin_username = {username}\n"
            f"admin_password = {password}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        env = {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32)}
        # Cheap password hashes (fast_hash/sitecustomize.py): scrypt costs 0.5 s per request here.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FAST_HASH), os.environ.get("PYTHONPATH")]))
        if _shared:  # in a test session: a copy of the session's migrated empty store (saves ~5 s)
            new_store(base)
        backend = f"sqlite:///{(base / 'mlflow.db').resolve()}"
        with mlflow_server(backend, base, app_name="basic-auth", workers=workers, env=env, timeout=timeout) as uri:
            yield AuthServer(uri, username, password)
