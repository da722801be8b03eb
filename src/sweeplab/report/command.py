"""``python -m sweeplab.report``: the comparison report of any sweep in the store (a Hydra app with
its own primary config, conf/report.yaml; ``--help`` lists its options)."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from sweeplab import errors, tracking
from sweeplab.checks import check_tracking
from sweeplab.errors import ConfigError
from sweeplab.paths import repo_root
from sweeplab.report import REPORT_DIR_TAG, Report, announce, build_report

log = logging.getLogger(__name__)


def write_report(cfg: DictConfig) -> Report:
    """Write (and log) the report of ``cfg.sweep`` (``latest``: the newest sweep)."""
    check_tracking(cfg.tracking)
    tracking.protect(cfg)
    experiment_id = tracking.find_experiment(cfg.tracking)
    if experiment_id is None:
        raise ConfigError(f"no experiment {cfg.tracking.experiment!r} in the MLflow store {tracking.tracking_uri()}")
    sweep_id = str(cfg.sweep)
    if sweep_id == "latest":
        sweep_id = tracking.latest_sweep(experiment_id)
        if sweep_id is None:
            raise ConfigError(
                f"no sweeps in experiment {cfg.tracking.experiment!r} of {tracking.tracking_uri()}; "
                f"run one with python train.py -m ..."
            )
    out = cfg.out
    if out is None:
        previous = tracking.sweep_parent(experiment_id, sweep_id)
        out = previous and previous.tags.get(REPORT_DIR_TAG)
        if not out or not Path(out).parent.is_dir():
            out = Path(cfg.paths.log_dir) / "reports" / sweep_id
    result = build_report(
        experiment_id,
        sweep_id,
        Path(out),
        log_to_mlflow=bool(cfg.log_to_mlflow),
        metric=str(cfg.tracking.best_metric),
        direction=str(cfg.tracking.best_direction),
    )
    announce(result)
    return result


@hydra.main(version_base="1.3", config_path=str(repo_root() / "conf"), config_name="report")
def main(cfg: DictConfig) -> None:
    errors.run_task(write_report, cfg)
