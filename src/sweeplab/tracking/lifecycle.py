"""A run's lifecycle: opened (new, nested under a sweep's parent, or reopened to resume) and ended
FINISHED, FAILED or KILLED with the reason."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
from mlflow.tracking import MlflowClient

from sweeplab.errors import RunStopped
from sweeplab.tracking.records import FAILURE_TAG
from sweeplab.tracking.secrets import clean


@contextmanager
def open_run(
    experiment_id: str,
    name: str | None = None,
    run_id: str | None = None,
    tags=None,
    parent_run_id: str | None = None,
    system_metrics: bool = False,
) -> Iterator[str]:
    """Start (or, with ``run_id``, reopen) the active run and yield its id; end it FINISHED, FAILED
    (the reason in the tag sweeplab.failure) or KILLED. An interrupt may carry a ``hint`` (how to
    continue), which goes into the failure tag; a run stopped on purpose (``RunStopped``: pruned)
    ends KILLED without a failure, and the code after the ``with`` goes on. ``parent_run_id`` nests a
    new run under a sweep's parent run; ``system_metrics`` records CPU, memory (and GPU) use with
    MLflow's own monitor."""
    active = mlflow.start_run(
        run_id=run_id,
        experiment_id=None if run_id else experiment_id,
        run_name=clean(name) if name else name,
        tags={k: clean(v) for k, v in (tags or {}).items()},
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
    except RunStopped:  # on purpose (a sweep's pruner): KILLED, with no failure, and the caller goes on
        status = "KILLED"
    except SystemExit as err:  # e.g. submitit stopping a job it has requeued: the requeued job resumes the run
        status, reason = "KILLED", f"the process was told to exit (code {err.code})"
        raise
    except BaseException as err:
        status, reason = "FAILED", f"{type(err).__name__}: {err}".splitlines()[0][:5000]
        raise
    finally:
        if reason:
            mlflow.set_tag(FAILURE_TAG, reason)
        mlflow.end_run(status)


def create_run(experiment_id: str, name: str, tags: dict | None = None) -> str:
    """A run that is not the active one (a sweep's parent), left RUNNING until ``end_run``."""
    tags = {k: clean(v) for k, v in (tags or {}).items()}
    return MlflowClient().create_run(experiment_id, run_name=clean(name), tags=tags).info.run_id


def end_run(run_id: str, status: str = "FINISHED") -> None:
    MlflowClient().set_terminated(run_id, status)


def reopen_run(run_id: str) -> None:
    """A run that is not the active one (a continued sweep's parent) is RUNNING again until ``end_run``."""
    MlflowClient().update_run(run_id, status="RUNNING")


def current_run_id(run_id: str | None) -> str:
    return run_id or mlflow.active_run().info.run_id
