"""One training job: the config's pieces (build.build_run) -> the engine -> MLflow (the tracking
package: the run opened, its start recorded, each epoch logged, its model kept) -> the objective.
In a sweep the job is a trial of the sweep's study (sweeplab.study): it reports each epoch, may be
stopped early by the sweep's pruner, and tells the study how it ended."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from sweeplab import build, checkpoint, job, plots, study, tracking
from sweeplab.checks import check_run
from sweeplab.data import Dataset
from sweeplab.device import device_label
from sweeplab.engine import Trainer
from sweeplab.errors import ConfigError, RunStopped
from sweeplab_model import Classifier

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> float:
    """The task behind train.py: a new run, ``reproduce=<run id>`` (a new run from that run's saved
    config) or ``resume=<run id>`` (continue that run from its last checkpoint); in a sweep, the job's
    trial (a retried trial resumes the run its interrupted job began). Returns ``cfg.objective``."""
    if cfg.get("resume"):
        return fit(config_of(cfg.resume, cfg), resume=str(cfg.resume))
    if cfg.get("reproduce"):
        return fit(config_of(cfg.reproduce, cfg))
    if cfg.get("seeds") is not None and not job.is_multirun():
        raise ConfigError(
            f"seeds={cfg.seeds} runs each configuration of a sweep with {cfg.seeds} seeds: add -m "
            f"(python train.py -m seeds={cfg.seeds} ...), or choose one seed with trainer.seed"
        )
    requeued = unfinished_run_of_this_job(cfg)
    if requeued:
        log.info(f"this job ran before (a requeued cluster job): resuming its run {requeued}")
    trial = study.job_trial(cfg)
    if trial is None:
        return fit(cfg, resume=requeued)
    with trial.running():
        earlier = None if requeued else trial.resume_run
        resume = requeued or (earlier if resumable(cfg, earlier) else None)
        if earlier and resume:
            log.info(f"trial {trial.number} is a retry: resuming the run {earlier} that its interrupted job began")
        value = fit(cfg, resume=resume, trial=trial, replaces=None if resume else earlier)
        trial.tell(value)
    return value


def resumable(cfg: DictConfig, run_id: str | None) -> bool:
    """A run that can go on from its checkpoint: it has one, and it did not finish."""
    if run_id is None or not (Path(cfg.paths.checkpoint_dir) / run_id / "last.pt").is_file():
        return False
    tracking.setup(cfg.tracking)
    return tracking.get_run(run_id).status != "FINISHED"


def unfinished_run_of_this_job(cfg: DictConfig) -> str | None:
    """The run this very job folder started and did not finish, with a checkpoint to resume from: a
    job that submitit requeued after a preemption or time limit reruns in its own folder."""
    run_id = job.noted_run()
    return run_id if resumable(cfg, run_id) else None


def config_of(run_id: str, current: DictConfig) -> DictConfig:
    """A run's saved config, with the groups that say where things are (job.ENVIRONMENT_GROUPS:
    tracking, paths) and the command line's other value overrides taken from the current invocation."""
    tracking.setup(current.tracking)
    cfg = tracking.saved_config(str(run_id))
    for group in job.ENVIRONMENT_GROUPS:
        cfg[group] = current[group]
    cfg.origin_run = str(run_id)
    for override in OverridesParser.create().parse_overrides(job.overrides()):
        key = override.get_key_element()
        if key in ("resume", "reproduce") or key.split(".")[0] in job.ENVIRONMENT_GROUPS:  # taken whole above
            continue
        missing = not override.is_force_add() and OmegaConf.select(cfg, key, default=_MISSING) is _MISSING
        if missing or isinstance(OmegaConf.select(cfg, key), DictConfig):
            raise ConfigError(f"{override.input_line}: only plain values can be changed on a saved config")
        OmegaConf.update(cfg, key, override.value(), force_add=True)
    return cfg


_MISSING = object()


def fit(cfg: DictConfig, resume: str | None = None, trial=None, replaces: str | None = None) -> float:
    """Run one job; return ``cfg.objective`` (best test accuracy by default).

    Everything that can be wrong with the input is checked, and every piece built (one call:
    build.build_run), before the MLflow run is created; its start is recorded in one call
    (tracking.record_start). ``resume`` reopens that MLflow run and continues from its last checkpoint.
    ``trial`` (a sweep's, sweeplab.study.JobTrial) hears every epoch and may stop the run: it ends
    KILLED, tagged sweeplab.pruned_at_epoch, its checkpoint kept. ``replaces``: an interrupted run
    that this one replaces (it kept no checkpoint to resume), tagged with this run's id.
    """
    check_run(cfg)
    tracking.protect(cfg)
    state = resume_state(cfg, resume) if resume else None
    pieces = build.build_run(cfg)
    trainer = pieces.trainer
    if state is not None:
        check_schedule_length(trainer, state, resume, cfg)
    experiment_id = tracking.setup(cfg.tracking)
    overrides, git = job.overrides(), tracking.git_state()
    tags = {}
    if not resume:
        tags = tracking.tags_for(cfg.trainer.seed, overrides, job.sweep_id(), git)
        tags[tracking.CONFIGURATION_TAG] = job.configuration(overrides)
        if cfg.get("origin_run"):
            tags["sweeplab.reproduces"] = str(cfg.origin_run)
    name = cfg.tracking.get("run_name") or job.run_name(overrides)

    system_metrics = bool(cfg.tracking.get("system_metrics"))
    with tracking.open_run(experiment_id, name, resume, tags, job.parent_run_id(), system_metrics) as run_id:
        job.note_run(run_id)
        tracking.set_tags({"sweeplab.device": device_label(pieces.device)})  # which card, in a sweep over several
        ckpt_dir = Path(cfg.paths.checkpoint_dir) / run_id
        logger = tracking.MlflowLogger(run_id)
        if state is not None:
            trainer.load_state_dict(state)
            tracking.set_tags({"sweeplab.resumed_from_epoch": state["epoch"]})
            tracking.delete_tags([tracking.PRUNED_TAG, tracking.STOPPED_TAG])  # it trains on now
            log.info(f"resuming run {run_id} after epoch {trainer.epoch}")
        else:
            tracking.record_start(run_start(cfg, overrides, pieces.data, git, ckpt_dir))
        if trial is not None:
            trial.started(run_id)
            tracking.set_tags({tracking.TRIAL_TAG: trial.number})
        if replaces:
            tracking.set_tags({tracking.RETRIED_TAG: run_id}, replaces)
        log.info(f"MLflow run {run_id} ({tracking.tracking_uri()}), checkpoints in {ckpt_dir}")
        try:
            trainer.fit(cfg.trainer.epochs, checkpoint_dir=ckpt_dir, callbacks=[logger] + ([trial] if trial else []))
        except KeyboardInterrupt as err:
            err.hint = f"run {run_id} is KILLED, its last checkpoint kept; continue: python train.py resume={run_id}"
            raise
        finally:
            logger.flush()
            _log_end(trainer, pieces.data, ckpt_dir, run_id)
        if trial is not None and trial.pruned_at is not None:
            tracking.set_tags({tracking.PRUNED_TAG: trial.pruned_at})
            log.info(f"run {run_id} is KILLED, its checkpoint kept (python train.py resume={run_id} trains it on)")
            raise RunStopped(f"pruned after epoch {trial.pruned_at}")  # the run ends KILLED; the job goes on
        if trainer.stopped_at is not None:
            tracking.set_tags({tracking.STOPPED_TAG: trainer.stopped_at})
    summary = trainer.summary()
    objective = summary.get(cfg.objective, trainer.history[-1].get(cfg.objective) if trainer.history else None)
    log.info(f"{cfg.objective} = {objective}")
    return float("nan") if objective is None else float(objective)


def resume_state(cfg: DictConfig, run_id: str) -> dict:
    """The run's last checkpoint (on the CPU: the trainer moves each part to its device), if it has
    epochs left to train."""
    state = checkpoint.load(Path(cfg.paths.checkpoint_dir) / run_id / "last.pt")
    if state["epoch"] >= cfg.trainer.epochs:
        raise ConfigError(
            f"run {run_id} has trained {state['epoch']} of trainer.epochs={cfg.trainer.epochs} "
            f"epochs: nothing to resume (pass a larger trainer.epochs to train on)"
        )
    return state


def check_schedule_length(trainer: Trainer, state: dict, run_id: str, cfg: DictConfig) -> None:
    """A schedule whose length was the run's (one-cycle's total_steps, cosine's T_max) cannot stretch
    to a different trainer.epochs: say so before the run is reopened. Plateau and none go on."""
    saved, now = state.get("scheduler") or {}, trainer.scheduler.state_dict() if trainer.scheduler else {}
    for key in ("total_steps", "T_max"):
        if key in saved and key in now and saved[key] != now[key]:
            raise ConfigError(
                f"run {run_id}'s {type(trainer.scheduler).__name__} was laid out for {key}={saved[key]}, and "
                f"trainer.epochs={cfg.trainer.epochs} needs {now[key]}: a schedule cannot be stretched; train a new "
                f"run instead: python train.py reproduce={run_id} trainer.epochs={cfg.trainer.epochs}"
            )


def run_start(cfg: DictConfig, overrides: list[str], data: Dataset, git: dict, ckpt_dir: Path) -> tracking.RunStart:
    """What a new run records about where it comes from: the config as params, its data (dataset inputs
    and tags), the git diff of a dirty tree, the config as composed (re-runnable with --config-dir),
    resolved, the overrides, and Hydra's own record of the job."""
    train_sha256 = data.train.checksum()
    splits = ((data.train, "training"), (data.test, "testing"), (data.val, "validation"))
    datasets = [
        tracking.DataInput(
            f"{data.name}-{context}",
            context,
            split.images.numpy(),
            split.labels.numpy(),
            train_sha256 if split is data.train else split.checksum(),
            data.source,
            {"classes": ",".join(data.classes)[:5000]},
        )
        for split, context in splits
        if split is not None
    ]
    tags = {
        "sweeplab.data.train_sha256": train_sha256,
        "sweeplab.data.train_size": len(data.train),
        "sweeplab.data.test_size": len(data.test),
        "sweeplab.checkpoint_dir": str(ckpt_dir),
    }
    texts = {
        "config/config.yaml": saved_config_text(cfg, origin_run=ckpt_dir.name),
        "config/resolved.yaml": OmegaConf.to_yaml(cfg, resolve=True),
        "config/overrides.txt": "\n".join(overrides) + "\n",
    }
    if git.get("dirty") and git.get("diff"):
        texts["git/diff.patch"] = git["diff"]
    folders = {}
    if HydraConfig.initialized() and (job.output_dir() / HydraConfig.get().output_subdir).is_dir():
        folders["hydra"] = job.output_dir() / HydraConfig.get().output_subdir
    return tracking.RunStart(tracking.flatten(cfg), tags, datasets, texts, folders)


def saved_config_text(cfg: DictConfig, origin_run: str) -> str:
    """The config as a run saves it (config/config.yaml): as composed, without its secrets, naming the
    run it came from, with a defaults list that makes it a primary config (``python train.py
    --config-dir <its folder> --config-name config`` reruns it)."""
    # A seeded sweep's job reruns as the one run it is (its trainer.seed), not as a sweep of seeds.
    this_run = {"origin_run": origin_run, **({"seeds": None} if "seeds" in cfg else {})}
    rerunnable = OmegaConf.merge({"defaults": ["_self_", {"hydra": "default"}]}, cfg, this_run)
    return OmegaConf.to_yaml(tracking.masked_config(rerunnable))


def _log_end(trainer: Trainer, data: Dataset, ckpt_dir: Path, run_id: str) -> None:
    """Figures, the best weights as an MLflow model, and the console log, also for a run that failed half way."""
    if trainer.history:
        tracking.log_figure(plots.curves_figure({run_id[:8]: trainer.history}), "plots/curves.png")
    best = ckpt_dir / "best.pt"
    if best.is_file():
        tracking.log_model(best_model(trainer, best, data), data.test.images[:2].numpy())
    if HydraConfig.initialized():
        log_file = job.output_dir() / f"{HydraConfig.get().job.name}.log"
        if log_file.is_file():
            tracking.log_files([log_file], "logs")


def best_model(trainer: Trainer, best: Path, data: Dataset) -> Classifier:
    """The trained network with its best weights and the data's normalization, on the CPU: what MLflow
    keeps as the run's model (uint8 images in, class probabilities out)."""
    net = copy.deepcopy(trainer.model).to("cpu", memory_format=torch.contiguous_format)
    build.load_weights(net, checkpoint.load(best, map_location="cpu"))
    return Classifier(net, data.mean, data.std, data.classes).eval()
