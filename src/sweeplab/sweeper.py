"""Which job runs next and which stops early: the sweeper behind every multirun of train.py (the
Hydra plugin in src/hydra_plugins/sweeplab_sweeper hands its work to ``StudySweeper``).

A sweep is an Optuna study (sweeplab.study). The sweep callback (sweeplab.sweep) has checked
everything and named the study before the sweeper starts; the sweeper opens the study (a new
grid's jobs queued in order), then asks for a trial, launches its job and asks again, until the
grid's queue is empty or the search has ``n_trials`` trials, counting those of earlier runs of
the command and of other sweepers sharing the study. Each job tells the study how it ended
(sweeplab.study.JobTrial); the sweeper tells FAIL for a job that could not.

Hydra's launchers take a batch of jobs and return when the whole batch has ended. The sweeper hands
them batches of one, from as many threads as jobs may run at once (``hydra.sweeper.n_jobs``, else
the launcher's own parallelism): a new trial starts as soon as any trial ends or is pruned, and no
slot waits for the slowest job of a batch. With Hydra's basic launcher the job runs in this thread.

At the end the study's result goes onto the sweep's MLflow parent run: the best value and params,
the trials table and Optuna's figures.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from omegaconf import OmegaConf
from optuna.trial import TrialState

from sweeplab import errors, job, study, tracking
from sweeplab.errors import ConfigError

log = logging.getLogger(__name__)

BEST_TAG = "sweeplab.optuna.best"  # "true" on the run of the study's best trial
BEST_RUN_TAG = "sweeplab.optuna.best_run"  # on the parent: that run
RESULTS_FILE = "optimization_results.yaml"  # in the sweep folder: the best params and value


class StudySweeper:
    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        sweep_dir = Path(self.config.hydra.sweep.dir)
        self.facts = job.sweep(sweep_dir)
        if not self.facts.get("study"):
            self._first_job_only()
        try:  # checked by the sweep callback already: this only rebuilds the pieces
            self.plan = study.settings(self.config, self.hydra_context.config_loader)
            self.storage = study.open_storage(self.plan.storage_url, self.plan.heartbeat_s)
            attrs = {"sweeplab.sweep": self.facts["id"], "sweeplab.parent_run": self.facts["parent_run_id"]}
            attrs["sweeplab.kind"] = self.plan.kind
            self.study = study.open_study(self.plan, self.storage, self.facts["study"], attrs)
        except ConfigError as err:
            errors.fail(err)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")  # as Hydra's own sweepers do
        log.info(
            f"study {self.study.study_name} ({self.plan.kind}, {self.plan.direction} {self.config.objective}) in "
            f"{tracking.safe_uri(self.plan.storage_url)}: up to {self.plan.slots} job(s) at once"
        )
        self.lock = threading.Lock()
        try:
            with study.Heartbeat(self.storage, self.plan.heartbeat_s) as self.heartbeat:
                if self.plan.slots == 1:
                    self._work()  # in this thread: a job that the basic launcher runs here gets the signals
                else:
                    with ThreadPoolExecutor(self.plan.slots, thread_name_prefix="sweeplab-slot") as pool:
                        slots = [pool.submit(self._work) for _ in range(self.plan.slots)]
                        for slot in slots:
                            slot.result()
        except BaseException:  # a signal, a job the launcher lost: the next run of the command continues
            self._stopped()
            raise
        self._report()

    def _first_job_only(self) -> None:
        """Without the sweep callback's facts (conf/train.yaml wires it) there is no study to run: a
        rehearsal of the sweeper's settings (they are built here, so a bad one raises) hands the
        launcher the first job, as a run would, and stops there; anything else ends with one error."""
        plan = study.settings(self.config, self.hydra_context.config_loader)
        study.open_storage(plan.storage_url, plan.heartbeat_s)
        self.launcher.launch([plan.overrides(study.first_params(plan))], initial_job_idx=0)
        raise RuntimeError("the sweeper runs a study named by sweeplab.sweep.SweepCallback: add it to hydra.callbacks")

    def _stopped(self) -> None:
        """The parent run KILLED now (the sweep callback's exit handler would do it only at exit)."""
        parent = self.facts["parent_run_id"]
        try:
            tracking.set_tags({tracking.FAILURE_TAG: "the sweep stopped before its last job ended"}, parent)
            tracking.end_run(parent, "KILLED")
        except Exception as err:  # the sweep is stopping anyway: say it, do not mask why
            log.error(f"could not mark the sweep's parent run {parent} KILLED: {str(err).splitlines()[0][:200]}")

    # -- one slot: ask, launch, settle, until the study has nothing left for it -------------------
    def _work(self) -> None:
        while (trial := self._next()) is not None:
            overrides = self.plan.overrides(trial.params)
            log.info(f"trial {trial.number}: {' '.join(f'{k}={v}' for k, v in trial.params.items()) or '(defaults)'}")
            try:
                (result,) = self.launcher.launch([overrides], initial_job_idx=trial.number)
            finally:
                self.heartbeat.discard(study.storage_id(trial))
            self._settle(trial, result)

    def _next(self):
        """The next trial to run (None: nothing left): a queued one (a grid's next job, a retried
        trial) first, else, in a search short of n_trials, a new one from the sampler. While trials
        that this sweeper did not launch still run (another sweeper's, or one whose process died
        and whose heartbeats stop: it is failed and queued again), wait for them."""
        told = False
        while True:
            with self.lock:
                study.fail_stale(self.study)
                trials = self.study.get_trials(deepcopy=False)
                more = self.plan.kind == study.SEARCH and study.counted(trials) < self.plan.n_trials
                if more or any(t.state == TrialState.WAITING for t in trials):
                    # (A grid's queue emptied by another sweeper just now: the sampler draws one of its jobs again.)
                    trial = study.ask(self.study, self.plan.space)
                    self.heartbeat.add(study.storage_id(trial))
                    return trial
                running = [t for t in trials if t.state == TrialState.RUNNING]
                elsewhere = [t.number for t in running if study.storage_id(t) not in self.heartbeat.ids]
            if not elsewhere:
                return None
            if not told:
                log.info(
                    f"waiting for trial(s) {elsewhere}: run elsewhere, or stopped (failed and queued again after "
                    f"2 heartbeats of hydra.sweeper.heartbeat_s={self.plan.heartbeat_s} s without a sign of life)"
                )
                told = True
            time.sleep(min(5.0, self.plan.heartbeat_s))

    def _settle(self, trial, result) -> None:
        """A job tells the study how it ended; one that could not (it failed before its trial was
        reached, or its process crashed) is told here: its value, else FAIL."""
        if self.storage.get_trial(study.storage_id(trial)).state != TrialState.RUNNING:
            return
        value = result.return_value if result.status == JobStatus.COMPLETED else None
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        with self.lock:
            if finite:
                self.study.tell(trial.number, float(value), skip_if_finished=True)
            else:
                self.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)

    # -- the result on the parent run -------------------------------------------------------------
    def _report(self) -> None:
        """The study's outcome: printed (a search's best), saved in the sweep folder and logged to
        the sweep's parent run. MLflow is a bonus here: a failure to log is one error line."""
        outcome = study.results(self.study)
        best = outcome.get("best")
        path = Path(self.config.hydra.sweep.dir) / RESULTS_FILE
        saved = {"name": self.study.study_name, "direction": self.plan.direction}
        if best:
            saved.update(best_params=best["params"], best_value=best["value"], best_trial=best["number"])
        OmegaConf.save(OmegaConf.create(saved), path)
        try:
            self._log(outcome, path)
        except Exception as err:
            log.error(f"could not log the study's result to MLflow: {str(err).splitlines()[0][:300]}")
        if best and self.plan.kind == study.SEARCH:
            params = " ".join(f"{k}={v}" for k, v in best["params"].items())
            where = f" (MLflow run {best['run_id']})" if best.get("run_id") else ""
            print(f"optuna: best {self.config.objective} = {best['value']:.4f}{where} with {params}", flush=True)

    def _log(self, outcome: dict, results_file: Path) -> None:
        parent = self.facts["parent_run_id"]
        metrics = {
            "optuna.trials": outcome["trials"],
            "optuna.trials_complete": outcome["complete"],
            "optuna.trials_pruned": outcome["pruned"],
            "optuna.trials_failed": outcome["fail"],
        }
        tags = {
            "sweeplab.optuna.objective": str(self.config.objective),
            "sweeplab.optuna.direction": self.plan.direction,
            "sweeplab.optuna.search_space": "; ".join(f"{k}: {d}" for k, d in self.plan.space.items())[:5000],
        }
        best = outcome.get("best")
        if best:
            metrics["optuna.best_value"] = best["value"]
            tags.update({f"best.{job.key_of(k)}": str(v) for k, v in best["params"].items()})
            tags["sweeplab.optuna.best_trial"] = str(best["number"])
            previous = tracking.get_run(parent).tags.get(BEST_RUN_TAG)
            if best["run_id"]:
                if previous and previous != best["run_id"]:
                    tracking.delete_tags([BEST_TAG], previous)  # a continued study found a better trial
                tracking.set_tags({BEST_TAG: "true"}, best["run_id"])
                tags[BEST_RUN_TAG] = best["run_id"]
        tracking.log_metrics(metrics, run_id=parent)
        tracking.set_tags(tags, parent)
        tracking.log_files([results_file], "optuna", parent)
        tracking.log_text(study.trials_csv(self.study), "optuna/trials.csv", parent)
        for name, figure in study.figures(self.study).items():
            tracking.log_figure(figure, f"optuna/{name}.png", parent)
