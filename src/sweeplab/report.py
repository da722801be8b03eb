"""Sweep bookkeeping: the Hydra callback that tags every job of a multirun with one sweep id and
turns failed jobs into the command's exit code."""
from __future__ import annotations

import logging
import os
import sys
import uuid
from datetime import datetime

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sweeplab import tracking
from sweeplab.run import SWEEP_ENV, SWEPT_ENV
from sweeplab.settings import ConfigError, validate

log = logging.getLogger(__name__)


def new_sweep_id() -> str:
    return f"{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def validate_jobs(config: DictConfig, parsed) -> None:
    """Compose and check every job of a grid sweep before the first one starts: a bad value in
    the fifth job should not surface after four jobs of training."""
    loader = GlobalHydra.instance().config_loader()
    for batch in BasicSweeper.split_arguments(parsed, None):
        for job in batch:
            try:
                validate(loader.load_sweep_config(config, list(job)))
            except ConfigError as err:
                print(f"error: job {' '.join(job)}: {err}", file=sys.stderr)
                sys.exit(2)


class SweepCallback(Callback):
    """Set in conf/hydra/default.yaml. Environment variables reach every launcher's workers."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        validate_jobs(config, parsed)
        os.environ.setdefault(SWEEP_ENV, new_sweep_id())
        os.environ[SWEPT_ENV] = ",".join(o.get_key_element() for o in parsed if o.is_sweep_override())
        log.info(f"sweep {os.environ[SWEEP_ENV]}: MLflow runs tagged {tracking.SWEEP_TAG}={os.environ[SWEEP_ENV]}")

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_id = os.environ.get(SWEEP_ENV)
        if not sweep_id:
            return
        experiment_id = tracking.setup(config.tracking)
        runs = tracking.sweep_runs(experiment_id, sweep_id)
        failed = [r for r in runs if r.info.status != "FINISHED"]
        log.info(f"sweep {sweep_id}: {len(runs) - len(failed)} of {len(runs)} runs FINISHED")
        if failed:
            names = ", ".join(f"{r.info.run_name} ({r.info.status})" for r in failed)
            print(f"error: {len(failed)} job(s) of sweep {sweep_id} did not finish: {names}", file=sys.stderr)
            sys.exit(1)
