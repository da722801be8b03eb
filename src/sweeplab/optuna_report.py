"""The Hydra callback that goes with the Optuna sweeper (conf/hparams_search/*.yaml).

- Run names: each trial's MLflow run is named after the searched values (``optimizer.lr=...``).
- Failed trials: a job that fails returns NaN (see sweeplab.errors); Optuna 2.x refuses to be told
  NaN, and the plugin then crashes the whole study. The callback turns such a job into a failed
  Hydra job, which the sweeper records as a FAIL trial, so the study goes on.
- The result: the best params and value are printed and logged to the sweep's parent run (params
  ``best.*``, metric ``optuna.best_value``, the sweeper's ``optimization_results.yaml`` and a table
  of all trials under ``optuna/``); the best trial's own run gets the tag ``sweeplab.optuna.best=true``.

The study itself lives in memory (Optuna 2.x cannot store it in SQL under SQLAlchemy 2): every
trial is a complete MLflow run, which is the durable record.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sweeplab import job, tracking

log = logging.getLogger(__name__)

BEST_TAG = "sweeplab.optuna.best"  # on the best trial's run
RESULTS_FILE = "optimization_results.yaml"  # written by the sweeper into the sweep folder


class TrialFailed(RuntimeError):
    """What the sweeper sees instead of a NaN objective."""


class OptunaReport(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        searched = list((config.hydra.sweeper.get("params") or {}).keys())
        sweep_dir = config.hydra.sweep.dir
        job.write_sweep(sweep_dir, swept=list(dict.fromkeys(job.sweep(sweep_dir).get("swept", []) + searched)))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs) -> None:
        if job_return.status != JobStatus.COMPLETED:  # a failed job's return_value is its exception, raised
            return
        value = job_return.return_value
        if isinstance(value, float) and math.isnan(value):
            job_return.status = JobStatus.FAILED
            job_return.return_value = TrialFailed("the job failed (its MLflow run says why); trial marked FAIL")

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        path = Path(config.hydra.sweep.dir) / RESULTS_FILE
        if not path.is_file():
            log.warning(f"no {path}: the study ended without a result")
            return
        results = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        facts = job.sweep(config.hydra.sweep.dir)
        best_run = None
        try:
            best_run = log_study(config, results, path, facts.get("id"), facts.get("parent_run_id"))
        except Exception as err:  # the result is on disk and printed below; MLflow is a bonus here
            log.error(f"could not log the Optuna result to MLflow: {str(err).splitlines()[0]}")
        if "best_params" in results:
            params = " ".join(f"{k}={v}" for k, v in results["best_params"].items())
            where = f" (MLflow run {best_run})" if best_run else ""
            print(f"optuna: best {config.objective} = {results['best_value']:.4f}{where} with {params}", flush=True)
        else:
            print(f"optuna: {len(results.get('solutions', []))} Pareto-optimal solutions in {path}", flush=True)


def _direction(config: DictConfig) -> str:
    direction = config.hydra.sweeper.get("direction", "maximize")
    return "max" if str(getattr(direction, "name", direction)) == "maximize" else "min"


def log_study(config: DictConfig, results: dict, results_path: Path, sweep_id: str | None, parent: str | None):
    """The study's outcome on the sweep's parent run; returns the best trial's run id (if known)."""
    experiment_id = tracking.setup(config.tracking)
    runs = [r for r in tracking.sweep_runs(experiment_id, sweep_id) if r.run_id != parent] if sweep_id else []
    objective = str(config.objective)
    chosen = tracking.choose_best(runs, objective, _direction(config)) if "best_params" in results else None
    best = chosen.best_run if chosen is not None else None
    if best is not None:
        tracking.set_tags({BEST_TAG: "true"}, best.run_id)
    if parent is None:
        return best.run_id if best is not None else None

    space = config.hydra.sweeper.get("params") or {}
    table = ["run_id,status," + ",".join(space) + f",{objective}"]
    for r in runs:
        values = [r.params.get(k, "") for k in space]
        table.append(",".join([r.run_id, r.status, *values, str(r.metrics.get(objective, ""))]))
    tags = {"sweeplab.optuna.objective": objective, "sweeplab.optuna.direction": _direction(config)}
    if best is not None:
        tags["sweeplab.optuna.best_run"] = best.run_id
    tracking.set_tags(tags, parent)
    params = {f"best.{k}": v for k, v in results.get("best_params", {}).items()}
    params["n_trials"] = len(runs)
    params["search_space"] = "; ".join(f"{k}: {v}" for k, v in space.items())
    tracking.log_params(params, parent)
    finished = sum(r.status == "FINISHED" for r in runs)
    tracking.log_metrics(
        {"optuna.best_value": results.get("best_value"), "optuna.finished_trials": finished}, 0, parent
    )
    tracking.log_files([results_path], "optuna", parent)
    tracking.log_text("\n".join(table) + "\n", "optuna/trials.csv", parent)
    return best.run_id if best is not None else None
