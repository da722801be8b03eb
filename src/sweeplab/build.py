"""The one place a config becomes the pieces of a run: device, data, model, optimizer, scheduler,
loaders and the trainer. train, find_lr, explain and the benchmark all build through here."""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from sweeplab.data import Augment, Dataset, DeviceLoader, Split, load_dataset
from sweeplab.engine import Trainer
from sweeplab.errors import ConfigError
from sweeplab.settings import resolve_device


@contextmanager
def building(piece: str):
    """Turn what a library raises while ``piece`` is built from the config into the one-line ConfigError."""
    try:
        yield
    except ConfigError:
        raise
    except Exception as err:
        cause = err.__cause__ or err  # Hydra wraps the constructor's own error
        text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise ConfigError(f"{piece}: {text}") from None


def device_of(cfg: DictConfig) -> torch.device:
    return resolve_device(cfg.trainer.device)


def precision_of(cfg: DictConfig, device: torch.device) -> str:
    """``trainer.precision``, with auto = bf16 autocast on CUDA, fp32 elsewhere."""
    auto = "bf16" if device.type == "cuda" else "fp32"
    return auto if cfg.trainer.precision == "auto" else cfg.trainer.precision


def channels_last_of(cfg: DictConfig, device: torch.device) -> bool:
    """``trainer.channels_last``, with auto = on CUDA only."""
    return device.type == "cuda" if cfg.trainer.channels_last == "auto" else bool(cfg.trainer.channels_last)


def load_data(cfg: DictConfig) -> Dataset:
    """The data set the config names, with its limits and validation split (CPU tensors)."""
    data = cfg.data
    dataset = load_dataset(data.root, data.npz, data.download, data.train_limit, data.test_limit, data.val_split)
    if cfg.trainer.batch_size > len(dataset.train):
        raise ConfigError(
            f"trainer.batch_size={cfg.trainer.batch_size} is larger than the {len(dataset.train)} training images"
        )
    return dataset


def build_model(cfg: DictConfig, device: torch.device) -> torch.nn.Module:
    """A fresh model from ``cfg.model``, on ``device`` in the memory format the trainer uses."""
    fmt = torch.channels_last if channels_last_of(cfg, device) else torch.contiguous_format
    with building("model"):
        return instantiate(cfg.model).to(device, memory_format=fmt)


def load_weights(model: torch.nn.Module, state: dict) -> torch.nn.Module:
    """A checkpoint's weights into ``model`` (strictly; ``torch.compile``'s prefix removed). A mismatch
    is a ConfigError with torch's first detail (e.g. "size mismatch for conv1.weight: ..."), for the
    caller to say whose checkpoint it was."""
    weights = {k.removeprefix("_orig_mod."): v for k, v in state["model"].items()}
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise ConfigError((lines[1] if len(lines) > 1 else lines[0])[:300]) from None
    return model


def build_optimizer(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    with building("optimizer"):
        return instantiate(cfg.optimizer)(model.parameters())


def build_scheduler(scheduler: DictConfig | None, optimizer, epochs: int, steps_per_epoch: int):
    """Instantiate the scheduler partial; fill its length (total_steps / T_max) when the config leaves
    it out. Returns (scheduler or None, interval, monitor)."""
    if not scheduler:  # scheduler=none
        return None, "epoch", None
    params = OmegaConf.to_container(scheduler, resolve=True)
    interval, monitor = params.pop("interval", "epoch"), params.pop("monitor", None)
    length = epochs * steps_per_epoch if interval == "step" else epochs
    with building("scheduler"):
        accepted = inspect.signature(get_class(params["_target_"])).parameters
        for key in ("total_steps", "T_max"):
            if key in accepted and params.get(key) is None:
                params[key] = length
        return instantiate(params)(optimizer), interval, monitor


def eval_loader(cfg: DictConfig, split: Split, device: torch.device, batch_size: int | None = None) -> DeviceLoader:
    """An evaluation loader (in order, no augmentation) over ``split``."""
    return DeviceLoader(
        split,
        batch_size or cfg.trainer.eval_batch_size,
        device,
        cfg.data.mean,
        cfg.data.std,
        channels_last=channels_last_of(cfg, device),
    )


def build_loaders(cfg: DictConfig, data: Dataset, device: torch.device, seed: int):
    """Train (shuffled, augmented), test and, with a validation split, val loaders on ``device``."""
    trainer, aug = cfg.trainer, cfg.augmentation
    with building("augmentation"):
        augment = Augment(aug.crop_padding, aug.pad_mode, aug.flip)
        train = DeviceLoader(
            data.train,
            trainer.batch_size,
            device,
            cfg.data.mean,
            cfg.data.std,
            shuffle=True,
            drop_last=trainer.drop_last,
            seed=seed,
            augment=augment,
            channels_last=channels_last_of(cfg, device),
        )
    test = eval_loader(cfg, data.test, device)
    val = eval_loader(cfg, data.val, device) if data.val is not None else None
    return train, test, val


def build_callbacks(cfg: DictConfig) -> list:
    """Engine callbacks named in ``trainer.callbacks`` (``name: {_target_: ..., ...}``)."""
    with building("trainer.callbacks"):
        return [instantiate(node) for node in (cfg.trainer.get("callbacks") or {}).values()]


def build_trainer(cfg: DictConfig, device: torch.device, data: Dataset) -> Trainer:
    """A Trainer with everything the config asks for, ready to fit; the training job adds the
    checkpoint folder and the MLflow callback once its run exists."""
    trainer = cfg.trainer
    model = build_model(cfg, device)
    optimizer = build_optimizer(cfg, model)
    train_loader, test_loader, val_loader = build_loaders(cfg, data, device, trainer.seed)
    scheduler, interval, monitor = build_scheduler(cfg.scheduler, optimizer, trainer.epochs, len(train_loader))
    return Trainer(
        model,
        optimizer,
        train_loader,
        test_loader,
        val_loader=val_loader,
        device=device,
        scheduler=scheduler,
        scheduler_interval=interval,
        monitor=monitor,
        precision=precision_of(cfg, device),
        label_smoothing=trainer.label_smoothing,
        tta_flip=trainer.tta_flip,
        target_acc=cfg.target_acc,
        checkpoint_every=trainer.checkpoint_every,
        compile=trainer.compile,
        progress=trainer.progress,
        callbacks=build_callbacks(cfg),
    )
