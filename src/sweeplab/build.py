"""The one place a config becomes the pieces of a run: device, data, model, optimizer, scheduler,
loaders and the trainer; ``build_run`` builds a training run's pieces in one call. train, find_lr
and the benchmark build through here."""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from sweeplab import job
from sweeplab.data import Augment, Dataset, DeviceLoader, Split, from_config
from sweeplab.device import job_device
from sweeplab.engine import EarlyStopping, Trainer, seed_everything
from sweeplab.errors import ConfigError, first_line


@dataclass
class RunPieces:
    """A training run as built from its config: the device, the data (CPU tensors, with the
    normalization the loaders use) and the trainer (model, optimizer, schedule, loaders) ready to fit."""

    device: torch.device
    data: Dataset
    trainer: Trainer


def build_run(cfg: DictConfig) -> RunPieces:
    """Every piece of a training run, in one call and before any MLflow run exists: the device, the
    data (checked against the batch size and the device's memory), the RNGs seeded (``trainer.seed``,
    so the model's first weights are the seed's), then the trainer."""
    device = device_of(cfg)
    data = load_data(cfg, device)
    seed_everything(cfg.trainer.seed, cfg.trainer.deterministic)
    return RunPieces(device, data, build_trainer(cfg, device, data))


@contextmanager
def building(piece: str):
    """Turn what a library raises while ``piece`` is built from the config into the one-line ConfigError."""
    try:
        yield
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(f"{piece}: {first_line(err.__cause__ or err)}") from None  # Hydra wraps the constructor's own


def device_of(cfg: DictConfig) -> torch.device:
    """The run's device; ``auto`` in a sweep on a machine with several GPUs: a card of the job's own."""
    sweep_dir, job_num = job.multirun_job()
    return job_device(cfg.trainer.device, sweep_dir, job_num, cfg.trainer.get("jobs_per_card", 1))


def precision_of(cfg: DictConfig, device: torch.device) -> str:
    """``trainer.precision``, with auto = bf16 autocast on CUDA, fp32 elsewhere."""
    auto = "bf16" if device.type == "cuda" else "fp32"
    return auto if cfg.trainer.precision == "auto" else cfg.trainer.precision


def channels_last_of(cfg: DictConfig, device: torch.device) -> bool:
    """``trainer.channels_last``, with auto = on CUDA only."""
    return device.type == "cuda" if cfg.trainer.channels_last == "auto" else bool(cfg.trainer.channels_last)


def cuda_graph_of(cfg: DictConfig, device: torch.device) -> bool:
    """``trainer.cuda_graph``, with auto = on CUDA unless the model is compiled (torch.compile has its own)."""
    graph = cfg.trainer.get("cuda_graph", "auto")  # .get: a run saved before the key existed
    return device.type == "cuda" and not cfg.trainer.compile if graph == "auto" else bool(graph)


def load_data(cfg: DictConfig, device: torch.device | None = None) -> Dataset:
    """The data set the config names, with its limits, validation split and normalization (CPU tensors);
    a data set too large for the training device (``device``, else ``trainer.device``) stops here,
    before an image folder is decoded."""
    if cfg.data.get("path"):  # an image folder: absolute, so the run's saved config reruns from anywhere
        cfg.data.path = str(Path(cfg.data.path).expanduser().resolve())
    padding = int(cfg.augmentation.crop_padding) if cfg.get("augmentation") else 0
    dataset = from_config(cfg.data, device or device_of(cfg), padding)
    if cfg.trainer.batch_size > len(dataset.train):
        raise ConfigError(
            f"trainer.batch_size={cfg.trainer.batch_size} is larger than the {len(dataset.train)} training images"
        )
    return dataset


def build_model(cfg: DictConfig, device: torch.device, num_classes: int | None = None) -> torch.nn.Module:
    """A fresh model from ``cfg.model``, on ``device`` in the memory format the trainer uses.

    ``num_classes`` (the data's) fills ``model.num_classes`` where the config leaves it null
    (``${data.num_classes}`` of an image folder)."""
    fmt = torch.channels_last if channels_last_of(cfg, device) else torch.contiguous_format
    fill = {}
    if "num_classes" in cfg.model and cfg.model.num_classes is None:
        if num_classes is None:
            raise ConfigError("model.num_classes is null (data.num_classes: from the data) and no data was given")
        fill["num_classes"] = int(num_classes)
    with building("model"):
        return instantiate(cfg.model, **fill).to(device, memory_format=fmt)


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
        make = instantiate(params)
    _rehearse(make, optimizer, length, interval)
    with building("scheduler"):
        return make(optimizer), interval, monitor


def _rehearse(make, optimizer, length: int, interval: str) -> None:
    """Step a copy of the schedule through the whole run on a one-parameter optimizer of the same
    kind, so a schedule that cannot run that long (one-cycle over a handful of steps divides by
    zero in torch) is a one-line error now, not a crash in the middle of training. Milliseconds."""
    import warnings

    try:
        dummy = type(optimizer)([torch.zeros(1, requires_grad=True)], **optimizer.defaults)
    except Exception:  # an optimizer that cannot be copied this way: the run itself will tell
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
            schedule = make(dummy)
            plateau = isinstance(schedule, torch.optim.lr_scheduler.ReduceLROnPlateau)
            for _ in range(length):
                schedule.step(0.0) if plateau else schedule.step()
    except Exception as err:
        raise ConfigError(
            f"scheduler: cannot run over this run's {length} {interval}s ({first_line(err)}); "
            f"train for more steps (trainer.epochs, a smaller trainer.batch_size) or change the schedule"
        ) from None


def eval_loader(
    cfg: DictConfig, split: Split, device: torch.device, batch_size: int | None = None, data: Dataset | None = None
) -> DeviceLoader:
    """An evaluation loader (in order, no augmentation) over ``split``, normalized as ``data`` is."""
    mean, std = normalization(cfg, data)
    return DeviceLoader(
        split,
        batch_size or cfg.trainer.eval_batch_size,
        device,
        mean,
        std,
        channels_last=channels_last_of(cfg, device),
    )


def normalization(cfg: DictConfig, data: Dataset | None = None) -> tuple:
    """(mean, std): the data's (the config's, or computed where the config has null), else the config's."""
    if data is not None and data.mean is not None:
        return data.mean, data.std
    if cfg.data.mean is None:
        raise ConfigError("data.mean is null (from the data) but no data was loaded to take it from")
    return cfg.data.mean, cfg.data.std


def build_loaders(cfg: DictConfig, data: Dataset, device: torch.device, seed: int):
    """Train (shuffled, augmented), test and, with a validation split, val loaders on ``device``."""
    trainer, aug = cfg.trainer, cfg.augmentation
    with building("augmentation"):
        augment = Augment(aug.crop_padding, aug.pad_mode, aug.flip)
        train = DeviceLoader(
            data.train,
            trainer.batch_size,
            device,
            *normalization(cfg, data),
            shuffle=True,
            drop_last=trainer.drop_last,
            seed=seed,
            augment=augment,
            channels_last=channels_last_of(cfg, device),
        )
    test = eval_loader(cfg, data.test, device, data=data)
    val = eval_loader(cfg, data.val, device, data=data) if data.val is not None else None
    return train, test, val


def build_callbacks(cfg: DictConfig) -> list:
    """Engine callbacks: early stopping when ``trainer.early_stopping.patience`` is set, and those named in
    ``trainer.callbacks`` (``name: {_target_: ..., ...}``)."""
    stopping = cfg.trainer.get("early_stopping") or {}
    callbacks = []
    if stopping.get("patience") is not None:
        callbacks.append(EarlyStopping(stopping.patience, stopping.monitor, stopping.min_delta))
    with building("trainer.callbacks"):
        return callbacks + [instantiate(node) for node in (cfg.trainer.get("callbacks") or {}).values()]


def build_trainer(cfg: DictConfig, device: torch.device, data: Dataset) -> Trainer:
    """A Trainer with everything the config asks for, ready to fit; the training job hands it the
    checkpoint folder and the MLflow callback in ``fit()`` once its run exists."""
    trainer = cfg.trainer
    model = build_model(cfg, device, data.num_classes)
    optimizer = build_optimizer(cfg, model)
    train_loader, test_loader, val_loader = build_loaders(cfg, data, device, trainer.seed)
    scheduler, interval, monitor = build_scheduler(cfg.scheduler, optimizer, trainer.epochs, len(train_loader))
    built = Trainer(
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
        cuda_graph=cuda_graph_of(cfg, device),
        progress=trainer.progress,
        callbacks=build_callbacks(cfg),
    )
    rehearse_step(built)
    return built


def rehearse_step(trainer: Trainer, n: int = 2) -> None:
    """One forward and backward pass of the model on ``n`` of its training images as a training step
    sees them (augmented, normalized, in its precision and memory format, on its device), so a model,
    data or augmentation setting that cannot train stops here with one line, before any run exists,
    not with a traceback in the first step. Nothing it touches changes: no optimizer step, gradients
    dropped, BatchNorm statistics and the random state put back. One step on two images: a small
    fraction of an epoch."""
    import torch.nn.functional as F

    model, device = trainer.model, trainer.device
    buffers = [b.clone() for b in model.buffers()]  # a training forward pass moves BatchNorm's statistics
    model.train()
    x = None
    try:
        x, y = trainer.train_loader.sample(min(n, trainer.train_loader.batch_size))
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), trainer.autocast:
            loss = F.cross_entropy(model(x), y, label_smoothing=trainer.label_smoothing)
            loss.backward()
    except Exception as err:
        images = f" {'x'.join(map(str, x.shape[1:]))}" if x is not None else ""
        raise ConfigError(f"the model cannot train on this run's{images} images: {first_line(err)}") from None
    finally:
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for buffer, saved in zip(model.buffers(), buffers):
                buffer.copy_(saved)
