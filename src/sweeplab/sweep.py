"""What happens around a multirun (the Hydra callback set in conf/train.yaml: train.py's multiruns).

Before the first job: every job's config is checked, the launcher's and the sweeper's own settings
and every job's training step are rehearsed (sweeplab.rehearsal), where the jobs run at once is
checked (sweeplab.placement), the store is checked, and the sweep gets an id and an MLflow parent run,
named after what it varies; every job's run is nested under it (its id reaches the jobs through the
sweep folder, see sweeplab.job). After the last job: the comparison is logged to the parent, which
records the best configuration (by its mean over seeds, with seeds) and its best run, the verdict on
seed noise, and how many jobs finished and failed; that run's model is registered; the parent ends
FINISHED, or FAILED naming the failed jobs, which also become the command's exit code.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import sys
import uuid
from datetime import datetime
from pathlib import Path

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sweeplab import device, errors, job, placement, report, tracking
from sweeplab.checks import check_run, check_tracking
from sweeplab.errors import ConfigError, RunFailed
from sweeplab.rehearsal import rehearse_jobs, rehearse_sweep

log = logging.getLogger(__name__)


def new_sweep_id() -> str:
    return f"{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def grid(parsed: list[Override]) -> list[list[str]]:
    """Every job of a grid sweep as its list of overrides, in the order Hydra's basic sweeper runs them:
    the product of the swept values (``a=1,2 b=x,y`` -> ``[a=1, b=x], [a=1, b=y], ...``), a key given
    twice counting once (the last one). Only enumerable sweeps (lists, choice, range, glob)."""
    values: dict[str, list[str]] = {}
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            values[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            values[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*values.values())]


def validate_jobs(config: DictConfig, parsed) -> list[DictConfig]:
    """Compose and check every job of a grid sweep before the first one starts: a bad value in
    the fifth job should not surface after four jobs of training. Searches whose jobs a sweeper
    draws as it goes (Optuna's ranges) are checked job by job instead (no configs returned)."""
    if any(o.is_sweep_override() and not o.is_discrete_sweep() for o in parsed):
        return []
    loader = GlobalHydra.instance().config_loader()
    jobs = []
    for overrides in grid(parsed):
        try:
            jobs.append(loader.load_sweep_config(config, overrides))
            check_run(jobs[-1])
        except ConfigError as err:
            raise ConfigError(f"job {' '.join(overrides)}: {err}") from None
    return jobs


def is_grid(config: DictConfig) -> bool:
    """The sweeper is Hydra's own grid sweeper (not a search such as Optuna's)."""
    return str(config.hydra.sweeper.get("_target_", "")).endswith(".BasicSweeper")


def grid_overrides(config: DictConfig) -> list[str]:
    """The overrides the grid sweeper expands: its own params (``hydra.sweeper.params``: ``seeds=N``'s
    ``trainer.seed=range(1,N+1)``), then the command line's, which win for a key in both, as in Hydra."""
    params = config.hydra.sweeper.get("params") if is_grid(config) else None
    return [f"{key}={value}" for key, value in (params or {}).items()] + list(config.hydra.overrides.task)


def check_seeds(config: DictConfig) -> None:
    """``seeds=N`` is a grid sweep's shorthand: not beside a swept ``trainer.seed``, not in a search."""
    seeds = config.get("seeds")
    if seeds is None:
        return
    try:
        job.seed_sweep(seeds)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if not is_grid(config):
        raise ConfigError(
            f"seeds={seeds} repeats a grid sweep's configurations; a search (hydra.sweeper="
            f"{config.hydra.sweeper._target_.rsplit('.', 1)[-1]}) chooses its own trials: leave seeds out"
        )
    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    mine = [o.input_line for o in parsed if o.get_key_element() == "trainer.seed"]
    if mine:
        raise ConfigError(f"seeds={seeds} and {mine[0]} both choose the seeds: keep one of them")


def sweep_name(parsed, config: DictConfig) -> str:
    """``sweep optimizer.lr=1e-2,9.33e-3 seeds=3`` (what the sweep varies; an Optuna search names its space)."""
    swept = [o.input_line for o in parsed if o.is_sweep_override() and o.input_line in config.hydra.overrides.task]
    if config.get("seeds") is not None:
        swept.append(f"seeds={config.seeds}")
    if not is_grid(config):
        searched = list((config.hydra.sweeper.get("params") or {}).keys())
        if searched:
            swept.append("search " + ",".join(searched))
    return ("sweep " + " ".join(swept or ["(no swept values)"]))[:250]


def registered_name(config: DictConfig, best: tracking.Run) -> str:
    """``tracking.registered_model``, else ``<data>-<model>`` of the best run (e.g. cifar10-resnet18)."""
    if config.tracking.get("registered_model"):
        return str(config.tracking.registered_model)
    params = best.params
    model = params.get("model.name") or params.get("model._target_", "model").rsplit(".", 1)[-1]
    return f"{params.get('data.name', 'data')}-{model}"


class SweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        try:
            check_tracking(config.tracking)  # what protect() reads
        except ConfigError as err:
            errors.fail(err)
        tracking.protect(config)  # from here on, Hydra's own log lines of each job's overrides are masked too
        loader = GlobalHydra.instance().config_loader()  # for glob(...) sweeps, which list a group's options
        try:  # before any job starts: every job, where they run at once, the launcher and sweeper, the store
            check_seeds(config)
            parsed = OverridesParser.create(config_loader=loader).parse_overrides(grid_overrides(config))
            jobs = validate_jobs(config, parsed)
            rehearse_sweep(config)  # the launcher's own settings first: placement reads them
            placement.check_sweep(config, jobs)
            rehearse_jobs(jobs, {o.get_key_element() for o in parsed if o.is_sweep_override()})
            experiment_id = tracking.setup(config.tracking)
        except ConfigError as err:
            errors.fail(err)
        sweep_id = new_sweep_id()
        tags = tracking.tags_for(config.trainer.seed, list(config.hydra.overrides.task), sweep_id, tracking.git_state())
        parent = tracking.create_run(experiment_id, sweep_name(parsed, config), {**tags, tracking.KIND_TAG: "sweep"})
        swept = [o.get_key_element() for o in parsed if o.is_sweep_override()]
        job.write_sweep(config.hydra.sweep.dir, id=sweep_id, parent_run_id=parent, swept=swept)
        atexit.register(_abandoned, parent)
        log.info(f"sweep {sweep_id}: MLflow parent run {parent}, jobs tagged {tracking.SWEEP_TAG}={sweep_id}")

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        device.release_card()  # in the job's process: a reused worker's next job claims afresh

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        facts = job.sweep(sweep_dir)
        if not facts:
            return
        sweep_id, parent = facts["id"], facts["parent_run_id"]
        atexit.unregister(_abandoned)
        # Jobs that failed before their MLflow run existed leave only this file in their folder.
        failed_jobs = sorted(
            p.parent.name for p in sweep_dir.glob(f"*/{errors.FAILED_MARKER}") if not job.noted_run(p.parent)
        )
        try:
            experiment_id = tracking.setup(config.tracking)
            runs = report.job_runs(experiment_id, sweep_id)
        except ConfigError as err:
            errors.fail(RunFailed(f"sweep {sweep_id}: {err}"))
        if runs:
            try:  # the report is a bonus: a broken one must not hide the sweep's own outcome
                metric, direction = str(config.tracking.best_metric), str(config.tracking.best_direction)
                report.announce(
                    report.build_report(
                        experiment_id, sweep_id, sweep_dir / "report", metric=metric, direction=direction
                    )
                )
            except Exception as err:
                log.error(f"sweep {sweep_id}: could not write the report: {type(err).__name__}: {err}")
        failed = [f"{r.name} ({r.status})" for r in runs if r.status != "FINISHED"]
        failed += [f"job {name} (failed before its run started)" for name in failed_jobs]
        finish(config, parent, runs, failed)
        log.info(
            f"sweep {sweep_id}: {len(runs) + len(failed_jobs) - len(failed)} of "
            f"{len(runs) + len(failed_jobs)} jobs FINISHED"
        )
        if failed:
            errors.fail(RunFailed(f"sweep {sweep_id} did not finish: {', '.join(failed)} (see {sweep_dir})"))


def finish(config: DictConfig, parent: str, runs: list[tracking.Run], failed: list[str]) -> None:
    """The sweep's outcome on its parent run; the best run of the best configuration registered; the
    parent ended. With seeds the best is a configuration, by its mean (sweeplab.tracking.configurations)."""
    metric, direction = str(config.tracking.best_metric), str(config.tracking.best_direction)
    ranked = tracking.configurations(runs, metric, direction)
    best = ranked[0] if ranked else None
    jobs = len(runs) + sum(f.startswith("job ") for f in failed)
    tracking.log_metrics(
        {"sweep.jobs": jobs, "sweep.jobs_finished": jobs - len(failed), "sweep.jobs_failed": len(failed)}, run_id=parent
    )
    said = report.verdict(ranked)
    tags = {"sweeplab.sweep.best_metric": metric, "sweeplab.sweep.verdict": said.text}
    if said.p_value is not None:
        tracking.log_metrics({"sweep.verdict_p_value": said.p_value}, run_id=parent)
    if best is not None:
        run = best.best_run
        tracking.log_metrics({"sweep.best_value": run.metrics[metric]}, run_id=parent)
        if any(c.n > 1 for c in ranked):  # seeds: the best configuration's mean and spread
            tracking.log_metrics({"sweep.best_mean": best.mean, "sweep.best_std": best.std or 0.0}, run_id=parent)
            tracking.log_metrics({"sweep.best_seeds": best.n}, run_id=parent)
        tags.update(
            {
                "sweeplab.sweep.best_configuration": best.name,
                "sweeplab.sweep.best_run": run.run_id,
                "sweeplab.sweep.best_run_name": run.name,
            }
        )
        if config.tracking.get("register", True) and tracking.model_uri(run.run_id):
            name = registered_name(config, run)
            version, moved = tracking.register_best(name, run, metric, direction)
            tags.update(
                {
                    "sweeplab.registered_model": name,
                    "sweeplab.registered_version": str(version),
                    "sweeplab.registered_best": str(moved).lower(),
                }
            )
            holder = tracking.model_alias(name)
            alias = f"@{tracking.BEST_ALIAS} " + (
                "moved to it" if moved else f"stays on version {holder and holder[0]}"
            )
            log.info(f"registered {name} version {version} ({metric} {run.metrics[metric]:.4f}); {alias}")
    log.info(f"verdict: {said.text}")
    if failed:
        tags[tracking.FAILURE_TAG] = f"failed jobs: {', '.join(failed)}"[:5000]
    tracking.set_tags(tags, parent)
    tracking.end_run(parent, "FAILED" if failed else "FINISHED")


def _abandoned(parent: str) -> None:
    """At exit, a sweep that never reached its end (interrupted, crashed) leaves its parent KILLED."""
    try:
        if tracking.get_run(parent).status == "RUNNING":
            tracking.set_tags({tracking.FAILURE_TAG: "the sweep stopped before its last job ended"}, parent)
            tracking.end_run(parent, "KILLED")
    except Exception as err:  # the interpreter is exiting: say it, but do not mask how it exits
        print(f"sweeplab: could not mark the sweep's parent run {parent} KILLED: {err}", file=sys.stderr)
