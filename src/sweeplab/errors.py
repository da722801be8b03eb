"""The one error policy, used by every entry point (train.py, find_lr.py, explain.py, the report command)
and by the sweep callback:

- a user mistake (``ConfigError``) is one line on stderr and exit code 2, before any work;
- a run that failed (``RunFailed``: a NaN loss, no suggestion, ...) is one line and exit code 1;
- a signal that asks the process to stop (SIGINT/Ctrl-C, SIGTERM, SIGHUP: what schedulers send at
  cancel, preemption and time limit) ends the current run KILLED with its last complete epoch
  checkpointed, prints how to continue it, and exits 128 + the signal's number;
- anything else is a bug and keeps its traceback.

A run that a sweep's pruner stopped (``RunStopped``) is none of these: its job ends normally (exit 0).

In a multirun a failed job does not stop the sweep: its error is logged, a ``FAILED`` file is left in
its job folder (also when it failed before its MLflow run existed), and the job returns NaN; the
sweep callback turns failed jobs into the command's exit code.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

log = logging.getLogger(__name__)

FAILED_MARKER = "FAILED"  # written into a failed multirun job's folder


class ConfigError(ValueError):
    """A mistake in the user's input: reported as one line, before any work starts (exit code 2)."""


class RunFailed(RuntimeError):
    """The run itself failed (e.g. the loss became NaN): reported as one line (exit code 1)."""


class RunStopped(Exception):
    """A run stopped on purpose before its last epoch (a sweep's pruner): it ends KILLED with its
    checkpoint kept (``resume=<run id>`` trains it on), and it is not a failure."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, like Ctrl-C's KeyboardInterrupt."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(err: BaseException) -> int:
    if isinstance(err, ConfigError):
        return 2
    if isinstance(err, KeyboardInterrupt):
        return 128 + getattr(err, "signum", signal.SIGINT)
    return 1


def first_line(err: BaseException) -> str:
    """The first line of what ``err`` says, else the name of its type: a library's error in one line."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def message(err: BaseException) -> str:
    """The one line a user sees."""
    if isinstance(err, KeyboardInterrupt):
        hint = getattr(err, "hint", None)
        return f"interrupted ({signal.Signals(getattr(err, 'signum', signal.SIGINT)).name})" + (
            f": {hint}" if hint else ""
        )
    return f"error: {first_line(err)}"


@contextmanager
def stop_signals():
    """SIGTERM and SIGHUP raise ``Interrupted`` in the main thread while the task runs. Under submitit
    (a SLURM job) SIGTERM stays submitit's: SLURM sends it at preemption before the signal with which
    submitit checkpoints and requeues the job."""
    signals = [signal.SIGHUP] + ([] if os.environ.get("SUBMITIT_EXECUTOR") else [signal.SIGTERM])

    def raise_interrupted(signum, frame):
        raise Interrupted(signum)

    previous = {}
    try:
        for signum in signals:
            previous[signum] = signal.signal(signum, raise_interrupted)
    except ValueError:  # not the main thread (a launcher's worker thread): leave the signals alone
        pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def fail(err: BaseException) -> NoReturn:
    """Print the one line for ``err`` on stderr and exit with its code."""
    print(message(err), file=sys.stderr, flush=True)
    sys.exit(exit_code(err))


def _multirun_job_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().runtime.output_dir)
    return None


def run_task(task, cfg):
    """Call ``task(cfg)`` under the policy above; return what it returns (NaN for a failed multirun job)."""
    try:
        with stop_signals():
            return task(cfg)
    except KeyboardInterrupt as err:
        fail(err)  # a sweep stops too: the user asked it to
    except Exception as err:
        expected = isinstance(err, (ConfigError, RunFailed))
        job_dir = _multirun_job_dir()
        if job_dir is None:
            if expected:
                fail(err)
            raise
        if expected:
            log.error(f"job failed: {message(err).removeprefix('error: ')}")
        else:
            log.exception("job failed")
        (job_dir / FAILED_MARKER).write_text(f"{type(err).__name__}: {err}\n")
        return math.nan
