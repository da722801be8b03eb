"""What happens around a multirun (the Hydra callback set in conf/train.yaml: train.py's multiruns).

Before the first job: every job's config is checked, the sweep's study too (its sampler, pruner,
database and direction, see sweeplab.study), the launcher's and the sweeper's own settings and every
job's training step are rehearsed (sweeplab.rehearsal), where the jobs run at once is checked
(sweeplab.placement), the store is checked, and the sweep gets an id and an MLflow parent run, named
after what it varies; every job's run is nested under it (its id reaches the jobs through the sweep
folder, see sweeplab.job). A command that continues a sweep (a search's study, a grid that stopped
part-way) gets that sweep's id and parent run back, RUNNING again. After the last job: the comparison
is logged to the parent, which records the best configuration (by its mean over seeds, with seeds)
and its best run, the verdict on seed noise, and how many jobs finished, were pruned and failed; that
run's model is registered; the parent ends FINISHED, or FAILED naming the failed jobs, which also
become the command's exit code (a pruned job is not a failure).
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sweeplab import device, errors, job, placement, report, study, tracking
from sweeplab.checks import check_run, check_tracking
from sweeplab.errors import ConfigError, RunFailed
from sweeplab.rehearsal import rehearse_jobs, rehearse_sweep

log = logging.getLogger(__name__)

FINGERPRINT_TAG = "sweeplab.sweep.fingerprint"  # on the parent: what the sweep is (its experiment overrides)
STUDY_TAG = "sweeplab.study"  # on the parent: the sweep's Optuna study
STORAGE_TAG = "sweeplab.study.storage"  # on the parent: where the study lives (without a password)
SWEEPER_TAG = "sweeplab.sweep.sweeper"  # on the parent: host:pid of the sweeper that runs (ran) it


def new_sweep_id() -> str:
    return f"{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def validate_jobs(config: DictConfig, parsed) -> list[DictConfig]:
    """Compose and check every job of a grid sweep before the first one starts: a bad value in
    the fifth job should not surface after four jobs of training. Searches whose jobs a sweeper
    draws as it goes (Optuna's ranges) are checked job by job instead (no configs returned)."""
    if any(o.is_sweep_override() and not o.is_discrete_sweep() for o in parsed):
        return []
    loader = GlobalHydra.instance().config_loader()
    jobs = []
    for overrides in job.grid(parsed):
        try:
            jobs.append(loader.load_sweep_config(config, overrides))
            check_run(jobs[-1])
        except ConfigError as err:
            raise ConfigError(f"job {' '.join(overrides)}: {err}") from None
    return jobs


def is_grid(config: DictConfig) -> bool:
    """The sweep is a grid of the command's values run by the study sweeper (train.py's default), not a
    search: no search space (``hydra.sweeper.params``) and no range to draw from on the command line."""
    if not study.is_study_sweep(config) or config.hydra.sweeper.get("params"):
        return False
    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    return not any(o.is_sweep_override() and not o.is_discrete_sweep() for o in parsed)


def grid_overrides(config: DictConfig) -> list[str]:
    """The overrides a grid expands: ``seeds=N``'s ``trainer.seed=range(1,N+1)``, then the command line's."""
    return job.seed_overrides(config.get("seeds")) + list(config.hydra.overrides.task)


def check_seeds(config: DictConfig) -> None:
    """``seeds=N`` is a grid sweep's shorthand: not beside a swept ``trainer.seed``, not in a search."""
    seeds = config.get("seeds")
    if seeds is None:
        return
    try:
        job.seed_overrides(seeds)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if not is_grid(config):
        raise ConfigError(
            f"seeds={seeds} repeats a grid sweep's configurations; a search (hydra.sweeper.params, or a range "
            f"on the command line) chooses its own trials: leave seeds out"
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


@dataclass
class Continued:
    """An earlier sweep that this command continues: its id and parent run (None: a study that
    another store's sweep began, continued under a new parent here)."""

    sweep_id: str | None = None
    parent: str | None = None


def sweeper_alive(run: tracking.Run) -> bool:
    """Whether the sweeper that left ``run`` (a parent) RUNNING may still run: not when it was this
    process (an earlier sweep of it) or a process of this host that is gone."""
    host, _, pid = run.tags.get(SWEEPER_TAG, "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's: it may well run
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def continued_sweep(config: DictConfig, experiment_id: str, plan: study.Settings) -> tuple[str, Continued]:
    """The study this command works on and the sweep it continues, if any. A named study (a search's,
    or hydra.sweeper.study_name) continues whenever it exists, under its parent run. A grid's own study
    continues when the newest sweep of the same command stopped part-way (KILLED, or RUNNING with its
    sweeper gone); otherwise the grid is a new sweep with a new study. ConfigError for a storage that
    cannot be used and a study made to optimise the other way."""
    storage = study.open_storage(plan.storage_url, plan.heartbeat_s)
    where = tracking.safe_uri(plan.storage_url)
    if plan.study_name is not None:
        if not study.stored(plan.study_name, storage, plan.direction):
            return plan.study_name, Continued()
        parents = tracking.sweep_parents(experiment_id, STUDY_TAG, plan.study_name)
        parents = [p for p in parents if p.tags.get(STORAGE_TAG) == where]
        if not parents:
            return plan.study_name, Continued()
        return plan.study_name, Continued(parents[0].tags[tracking.SWEEP_TAG], parents[0].run_id)
    newest = next(iter(tracking.sweep_parents(experiment_id, FINGERPRINT_TAG, plan.fingerprint)), None)
    stopped = newest is not None and (
        newest.status == "KILLED" or (newest.status == "RUNNING" and not sweeper_alive(newest))
    )
    name = newest.tags.get(STUDY_TAG) if stopped else None
    if name and newest.tags.get(STORAGE_TAG) == where and study.stored(name, storage, plan.direction):
        sweep_id = newest.tags[tracking.SWEEP_TAG]
        log.info(f"continuing sweep {sweep_id}, which stopped part-way (parent run {newest.run_id})")
        return name, Continued(sweep_id, newest.run_id)
    return None, Continued()


class SweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        try:
            check_tracking(config.tracking)  # what protect() reads
        except ConfigError as err:
            errors.fail(err)
        tracking.protect(config)  # from here on, Hydra's own log lines of each job's overrides are masked too
        loader = GlobalHydra.instance().config_loader()  # for glob(...) sweeps, which list a group's options
        plan, name, continued = None, None, Continued()
        try:  # before any job: every job, the study, the launcher and sweeper, where jobs run at once, the store
            check_seeds(config)
            parsed = OverridesParser.create(config_loader=loader).parse_overrides(grid_overrides(config))
            jobs = validate_jobs(config, parsed)
            if study.is_study_sweep(config):
                plan = study.settings(config, loader)
            rehearse_sweep(config)  # the launcher's own settings before placement, which reads them
            placement.check_sweep(config, jobs)
            rehearse_jobs(jobs, {o.get_key_element() for o in parsed if o.is_sweep_override()})
            experiment_id = tracking.setup(config.tracking)
            if plan is not None:
                name, continued = continued_sweep(config, experiment_id, plan)
        except ConfigError as err:
            errors.fail(err)
        begin(config, parsed, experiment_id, plan, name, continued)

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
        runs = [r for r in runs if tracking.RETRIED_TAG not in r.tags]  # replaced by their retry's run
        pruned = [r for r in runs if r.pruned_at]
        running = [r for r in runs if r.status == "RUNNING"]  # another sweeper's job, on a shared study
        failed = [f"{r.name} ({r.status})" for r in runs if r.status not in ("FINISHED", "RUNNING") and not r.pruned_at]
        failed += [f"job {name} (failed before its run started)" for name in failed_jobs]
        finish(config, parent, runs, failed, len(pruned))
        log.info(
            f"sweep {sweep_id}: {sum(r.status == 'FINISHED' for r in runs)} of {len(runs) + len(failed_jobs)} jobs "
            f"FINISHED, {len(pruned)} pruned" + (f", {len(running)} still running" if running else "")
        )
        if failed:
            errors.fail(RunFailed(f"sweep {sweep_id} did not finish: {', '.join(failed)} (see {sweep_dir})"))


def begin(
    config: DictConfig, parsed, experiment_id: str, plan: study.Settings | None, name: str | None, continued: Continued
) -> None:
    """The sweep's MLflow parent run (new, or a continued sweep's, RUNNING again) and the facts its jobs read."""
    sweep_id = continued.sweep_id or new_sweep_id()
    extra = {SWEEPER_TAG: study.sweeper_id()}
    swept = [o.get_key_element() for o in parsed if o.is_sweep_override()]
    facts = {}
    if plan is not None:
        name = name or f"{config.tracking.experiment}-grid-{sweep_id}"
        swept = plan.swept
        facts = {"study": name}
        extra.update({FINGERPRINT_TAG: plan.fingerprint, STUDY_TAG: name})
        extra[STORAGE_TAG] = tracking.safe_uri(plan.storage_url)
    if continued.parent:
        parent = continued.parent
        tracking.reopen_run(parent)
        tracking.set_tags(extra, parent)
        log.info(f"sweep {sweep_id} continues: MLflow parent run {parent} is RUNNING again")
    else:
        tags = tracking.tags_for(config.trainer.seed, list(config.hydra.overrides.task), sweep_id, tracking.git_state())
        tags.update({**extra, tracking.KIND_TAG: "sweep"})
        parent = tracking.create_run(experiment_id, sweep_name(parsed, config), tags)
    job.write_sweep(config.hydra.sweep.dir, id=sweep_id, parent_run_id=parent, swept=swept, **facts)
    atexit.register(_abandoned, parent)
    log.info(f"sweep {sweep_id}: MLflow parent run {parent}, jobs tagged {tracking.SWEEP_TAG}={sweep_id}")


def finish(config: DictConfig, parent: str, runs: list[tracking.Run], failed: list[str], pruned: int = 0) -> None:
    """The sweep's outcome on its parent run; the best run of the best configuration registered (never a
    pruned one); the parent ended. With seeds the best is a configuration, by its mean
    (sweeplab.tracking.configurations)."""
    metric, direction = str(config.tracking.best_metric), str(config.tracking.best_direction)
    ranked = tracking.configurations(runs, metric, direction)
    best = ranked[0] if ranked else None
    jobs = len(runs) + sum(f.startswith("job ") for f in failed)
    finished = sum(r.status == "FINISHED" for r in runs)
    tracking.log_metrics(
        {
            "sweep.jobs": jobs,
            "sweep.jobs_finished": finished,
            "sweep.jobs_pruned": pruned,
            "sweep.jobs_failed": len(failed),
        },
        run_id=parent,
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
