"""What happens around a multirun (the Hydra callback set in conf/hydra/default.yaml): every job's
config and the store are checked before the first job starts, the jobs get one sweep id, the sweep's
comparison is written when the last job has run, and failed jobs become the command's exit code."""

from __future__ import annotations

import logging
import os
import uuid
from datetime import datetime
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sweeplab import compare, errors, job, tracking
from sweeplab.errors import ConfigError, RunFailed
from sweeplab.settings import validate

log = logging.getLogger(__name__)


def new_sweep_id() -> str:
    return f"{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def validate_jobs(config: DictConfig, parsed) -> None:
    """Compose and check every job of a grid sweep before the first one starts: a bad value in
    the fifth job should not surface after four jobs of training. Searches whose jobs a sweeper
    draws as it goes (Optuna's ranges) are checked job by job instead."""
    if any(o.is_sweep_override() and not o.is_discrete_sweep() for o in parsed):
        return
    loader = GlobalHydra.instance().config_loader()
    for batch in BasicSweeper.split_arguments(parsed, None):
        for overrides in batch:
            try:
                validate(loader.load_sweep_config(config, list(overrides)))
            except ConfigError as err:
                raise ConfigError(f"job {' '.join(overrides)}: {err}") from None


class SweepCallback(Callback):
    """Environment variables set here reach every launcher's workers."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        try:  # before any job starts: every job's config, and the store they will all log to
            validate_jobs(config, parsed)
            tracking.check_reachable(tracking.store_uri(config.tracking))
        except ConfigError as err:
            errors.fail(err)
        os.environ.setdefault(job.SWEEP_ENV, new_sweep_id())
        os.environ[job.SWEPT_ENV] = ",".join(o.get_key_element() for o in parsed if o.is_sweep_override())
        log.info(f"sweep {job.sweep_id()}: MLflow runs tagged {tracking.SWEEP_TAG}={job.sweep_id()}")

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_id = job.sweep_id()
        if not sweep_id:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        # Jobs that failed before their MLflow run existed leave only this file in their folder.
        failed_jobs = sorted(p.parent.name for p in sweep_dir.glob(f"*/{errors.FAILED_MARKER}"))
        try:
            experiment_id = tracking.setup(config.tracking)
            runs = compare.job_runs(experiment_id, sweep_id)
        except ConfigError as err:
            errors.fail(RunFailed(f"sweep {sweep_id}: {err}"))
        if runs:
            try:  # the report is a bonus: a broken one must not hide the sweep's own outcome
                compare.announce(compare.build_report(experiment_id, sweep_id, sweep_dir / "report"))
            except Exception as err:
                log.error(f"sweep {sweep_id}: could not write the report: {type(err).__name__}: {err}")
        failed = [f"{r.name} ({r.status})" for r in runs if r.status != "FINISHED"]
        log.info(f"sweep {sweep_id}: {len(runs) - len(failed)} of {len(runs)} runs FINISHED")
        if failed or failed_jobs:
            jobs = f"; failed jobs (see their folders in {sweep_dir}): {', '.join(failed_jobs)}" if failed_jobs else ""
            what = ", ".join(failed) or "no run FAILED in MLflow"
            errors.fail(RunFailed(f"sweep {sweep_id} did not finish: {what}{jobs}"))
