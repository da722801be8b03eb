"""One training job: build the pieces from the config, run the engine, log to MLflow, return the objective."""

from __future__ import annotations

import inspect
import logging
import os
import sys
import tempfile
from pathlib import Path

import mlflow
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from sweeplab import checkpoint, plots, tracking
from sweeplab.data import Augment, DeviceLoader, load_dataset
from sweeplab.engine import NonFiniteLossError, Trainer, seed_everything
from sweeplab.settings import ConfigError, resolve_device, validate

log = logging.getLogger(__name__)

SWEEP_ENV = "SWEEPLAB_SWEEP_ID"  # set for every job of a multirun by sweeplab.report.SweepCallback
SWEPT_ENV = "SWEEPLAB_SWEPT_KEYS"
# Overrides that say where things are, not what the experiment is: left out of run names.
ENVIRONMENT_KEYS = ("tracking.", "paths.", "data.npz", "data.root", "trainer.device", "hydra.")


def main(cfg: DictConfig) -> float:
    """The task function behind train.py.

    A single run that fails exits non-zero with a one-line reason. In a multirun a failed job is
    logged, marked FAILED in MLflow (when its run had started) and in a ``FAILED`` file in its
    job folder, and the sweep goes on; the sweep callback turns failures into the exit code.
    """
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        if cfg.get("resume"):
            return train(config_of(cfg.resume, cfg), resume=cfg.resume)
        if cfg.get("reproduce"):
            return train(config_of(cfg.reproduce, cfg))
        return train(cfg)
    except KeyboardInterrupt:
        print(
            "interrupted: the MLflow run is marked KILLED and its last checkpoint kept "
            "(continue it with: python train.py resume=<run id>)",
            file=sys.stderr,
        )
        sys.exit(130)
    except Exception as err:
        known = isinstance(err, (ConfigError, NonFiniteLossError))
        if multirun:
            log.error(f"job failed: {err}") if known else log.exception("job failed")
            out = Path(HydraConfig.get().runtime.output_dir)
            (out / FAILED_MARKER).write_text(f"{type(err).__name__}: {err}\n")
            return float("nan")
        if not known:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2 if isinstance(err, ConfigError) else 1)


FAILED_MARKER = "FAILED"


def config_of(run_id: str, current: DictConfig) -> DictConfig:
    """A run's saved config, with where-things-are (tracking, paths) and the command line's other
    value overrides taken from the current invocation."""
    tracking.setup(current.tracking)
    cfg = tracking.saved_config(str(run_id))
    cfg.tracking, cfg.paths, cfg.origin_run = current.tracking, current.paths, str(run_id)
    parser = OverridesParser.create()
    for override in parser.parse_overrides(hydra_overrides()):
        key = override.get_key_element()
        if key in ("resume", "reproduce") or key.startswith(("tracking.", "paths.")):
            continue
        if (
            not override.is_force_add()
            and OmegaConf.select(cfg, key, default=_MISSING) is _MISSING
            or isinstance(OmegaConf.select(cfg, key), DictConfig)
        ):
            raise ConfigError(f"{override.input_line}: only plain values can be changed on a saved config")
        OmegaConf.update(cfg, key, override.value(), force_add=True)
    return cfg


_MISSING = object()


def hydra_overrides() -> list[str]:
    """The job's command-line overrides (none outside a Hydra app)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run_name(cfg: DictConfig, overrides: list[str]) -> str:
    """The swept values of a multirun job, else the overrides that define the experiment."""
    if cfg.tracking.get("run_name"):
        return str(cfg.tracking.run_name)
    swept = [k for k in os.environ.get(SWEPT_ENV, "").split(",") if k]
    keep = [o for o in overrides if o.split("=")[0].lstrip("+~") in swept]
    if not keep:
        keep = [o for o in overrides if not o.lstrip("+~").startswith(ENVIRONMENT_KEYS)]
    return " ".join(keep)[:250] or "defaults"


def build_scheduler(scfg: DictConfig | None, optimizer, epochs: int, steps_per_epoch: int):
    """Instantiate the scheduler partial; fill its length (total_steps / T_max) when the config leaves it out."""
    if not scfg:  # scheduler=none
        return None, "epoch", None
    params = OmegaConf.to_container(scfg, resolve=True)
    interval, monitor = params.pop("interval", "epoch"), params.pop("monitor", None)
    length = epochs * steps_per_epoch if interval == "step" else epochs
    accepted = inspect.signature(get_class(params["_target_"])).parameters
    for key in ("total_steps", "T_max"):
        if key in accepted and params.get(key) is None:
            params[key] = length
    return instantiate(params)(optimizer), interval, monitor


def precision_of(cfg: DictConfig, device: torch.device) -> str:
    """``trainer.precision``, with auto = bf16 autocast on CUDA, fp32 elsewhere."""
    auto = "bf16" if device.type == "cuda" else "fp32"
    return auto if cfg.trainer.precision == "auto" else cfg.trainer.precision


def channels_last_of(cfg: DictConfig, device: torch.device) -> bool:
    """``trainer.channels_last``, with auto = on CUDA only."""
    return device.type == "cuda" if cfg.trainer.channels_last == "auto" else bool(cfg.trainer.channels_last)


def build_model(cfg: DictConfig, device: torch.device):
    """A fresh model and its optimizer, from the config."""
    fmt = torch.channels_last if channels_last_of(cfg, device) else torch.contiguous_format
    model = instantiate(cfg.model).to(device, memory_format=fmt)
    return model, instantiate(cfg.optimizer)(model.parameters())


def build_loaders(cfg: DictConfig, data, device: torch.device, seed: int):
    """Train (shuffled, augmented), test and, with a validation split, val loaders on ``device``."""
    t, aug = cfg.trainer, cfg.augmentation
    common = dict(device=device, mean=cfg.data.mean, std=cfg.data.std, channels_last=channels_last_of(cfg, device))
    train = DeviceLoader(
        data.train,
        t.batch_size,
        shuffle=True,
        drop_last=t.drop_last,
        seed=seed,
        augment=Augment(aug.crop_padding, aug.pad_mode, aug.flip),
        **common,
    )
    test = DeviceLoader(data.test, t.eval_batch_size, **common)
    val = DeviceLoader(data.val, t.eval_batch_size, **common) if data.val is not None else None
    return train, test, val


def build(cfg: DictConfig, device: torch.device, data) -> dict:
    """Model, optimizer, scheduler and loaders for a run, all from the config."""
    model, optimizer = build_model(cfg, device)
    train_loader, test_loader, val_loader = build_loaders(cfg, data, device, cfg.trainer.seed)
    scheduler, interval, monitor = build_scheduler(cfg.scheduler, optimizer, cfg.trainer.epochs, len(train_loader))
    return dict(
        model=model,
        optimizer=optimizer,
        train_loader=train_loader,
        test_loader=test_loader,
        val_loader=val_loader,
        scheduler=scheduler,
        scheduler_interval=interval,
        monitor=monitor,
        precision=precision_of(cfg, device),
    )


def build_trainer(cfg: DictConfig, device: torch.device, data) -> Trainer:
    """A Trainer with everything the config asks for, ready to fit; train() adds the checkpoint
    folder and the MLflow callback once its run exists."""
    t = cfg.trainer
    return Trainer(
        **build(cfg, device, data),
        device=device,
        label_smoothing=t.label_smoothing,
        tta_flip=t.tta_flip,
        target_acc=cfg.target_acc,
        checkpoint_every=t.checkpoint_every,
        compile=t.compile,
        progress=t.progress,
    )


def load_data(cfg: DictConfig):
    d = cfg.data
    data = load_dataset(d.root, d.npz, d.download, d.train_limit, d.test_limit, d.val_split)
    if cfg.trainer.batch_size > len(data.train):
        raise ConfigError(
            f"trainer.batch_size={cfg.trainer.batch_size} is larger than the {len(data.train)} training images"
        )
    return data


def train(cfg: DictConfig, resume: str | None = None) -> float:
    """Run one job; return ``cfg.objective`` (best test accuracy by default).

    Everything that can be wrong with the input is checked before the MLflow run is created.
    ``resume`` reopens that MLflow run and continues from its last checkpoint.
    """
    validate(cfg)
    device = resolve_device(cfg.trainer.device)
    state = None
    if resume:
        state = checkpoint.load(Path(cfg.paths.checkpoint_dir) / resume / "last.pt", map_location=device)
        if state["epoch"] >= cfg.trainer.epochs:
            raise ConfigError(
                f"run {resume} has trained {state['epoch']} of trainer.epochs={cfg.trainer.epochs} "
                f"epochs: nothing to resume (pass a larger trainer.epochs to train on)"
            )
    data = load_data(cfg)
    experiment_id = tracking.setup(cfg.tracking)
    seed_everything(cfg.trainer.seed, cfg.trainer.deterministic)
    trainer = build_trainer(cfg, device, data)
    overrides = hydra_overrides()
    sweep_id = os.environ.get(SWEEP_ENV) if not resume else None
    git = tracking.git_state()
    run_tags = {} if resume else tracking.tags_for(cfg, overrides, sweep_id, git)
    if cfg.get("origin_run") and not resume:
        run_tags["sweeplab.reproduces"] = str(cfg.origin_run)

    with tracking.active_run(experiment_id, run_name(cfg, overrides), run_id=resume, tags=run_tags) as run:
        run_id = run.info.run_id
        ckpt_dir = Path(cfg.paths.checkpoint_dir) / run_id
        trainer.checkpoint_dir = ckpt_dir
        trainer.callbacks.append(tracking.MlflowLogger(run_id))
        if state is not None:
            trainer.load_state_dict(state)
            mlflow.set_tag("sweeplab.resumed_from_epoch", state["epoch"])
            log.info(f"resuming run {run_id} after epoch {trainer.epoch}")
        else:
            _log_start(cfg, overrides, data, git, ckpt_dir, run_id)
        log.info(f"MLflow run {run_id} ({mlflow.get_tracking_uri()}), checkpoints in {ckpt_dir}")
        try:
            trainer.fit(cfg.trainer.epochs)
        finally:
            _log_end(trainer, ckpt_dir, run_id)
    summary = trainer.summary()
    objective = summary.get(cfg.objective, trainer.history[-1].get(cfg.objective) if trainer.history else None)
    log.info(f"{cfg.objective} = {objective}")
    return float("nan") if objective is None else float(objective)


def _log_start(cfg: DictConfig, overrides: list[str], data, git: dict, ckpt_dir: Path, run_id: str) -> None:
    tracking.log_params(tracking.flatten(cfg))
    mlflow.set_tags(
        {
            "sweeplab.data.train_sha256": data.train.checksum(),
            "sweeplab.data.train_size": len(data.train),
            "sweeplab.data.test_size": len(data.test),
            "sweeplab.checkpoint_dir": str(ckpt_dir),
        }
    )
    if git.get("dirty") and git.get("diff"):
        mlflow.log_text(git["diff"], "git/diff.patch")
    # The config as composed (re-runnable with --config-dir), resolved, and Hydra's own record.
    rerunnable = OmegaConf.merge({"defaults": ["_self_", {"hydra": "default"}]}, cfg, {"origin_run": run_id})
    mlflow.log_text(OmegaConf.to_yaml(rerunnable), "config/config.yaml")
    mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config/resolved.yaml")
    mlflow.log_text("\n".join(overrides) + "\n", "config/overrides.txt")
    if HydraConfig.initialized():
        hydra_dir = Path(HydraConfig.get().runtime.output_dir) / HydraConfig.get().output_subdir
        if hydra_dir.is_dir():
            mlflow.log_artifacts(str(hydra_dir), "hydra")


def _log_end(trainer: Trainer, ckpt_dir: Path, run_id: str) -> None:
    """Figures, checkpoint and console log, also for a run that failed half way."""
    with tempfile.TemporaryDirectory() as tmp:
        if trainer.history:
            fig_path = Path(tmp) / "curves.png"
            plots.save(plots.curves_figure({run_id[:8]: trainer.history}), fig_path)
            mlflow.log_artifact(str(fig_path), "plots")
    best = ckpt_dir / "best.pt"
    if best.is_file():
        mlflow.log_artifact(str(best), "checkpoints")
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        log_file = Path(hc.runtime.output_dir) / f"{hc.job.name}.log"
        if log_file.is_file():
            mlflow.log_artifact(str(log_file), "logs")
