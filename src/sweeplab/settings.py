"""Validate the composed config before any work; resolve paths from the repository root."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from sweeplab.errors import ConfigError


def repo_root() -> Path:
    """The repository root, whatever the working directory (``SWEEPLAB_ROOT`` overrides it)."""
    if os.environ.get("SWEEPLAB_ROOT"):
        return Path(os.environ["SWEEPLAB_ROOT"]).resolve()
    here = Path(__file__).resolve().parents[2]  # src/sweeplab/settings.py -> root
    return here if (here / "conf").is_dir() else Path.cwd()


def register_resolvers() -> None:
    """``${sweeplab_root:}`` in the configs; called on import of the package."""
    if not OmegaConf.has_resolver("sweeplab_root"):
        OmegaConf.register_new_resolver("sweeplab_root", lambda: str(repo_root()))


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an unusable device is a ConfigError."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"trainer.device={name!r} is not a device name (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.device={name} but no CUDA device is available (use trainer.device=cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"trainer.device={name} but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type not in ("cpu", "mps"):
        raise ConfigError(f"trainer.device={name!r} is not supported (use auto, cpu, cuda or cuda:N)")
    return device


PRECISIONS = ("auto", "fp32", "bf16")
METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "val_loss", "val_acc")


def _positive_int(value, key: str, minimum: int = 1, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value!r} must be an integer >= {minimum}")


def validate(cfg: DictConfig) -> None:
    """Check everything that can be checked without loading data; raise ConfigError on the first problem."""
    try:
        OmegaConf.resolve(OmegaConf.create(OmegaConf.to_container(cfg, resolve=False)))
    except Exception as err:  # a broken interpolation or a missing mandatory value
        raise ConfigError(f"the config does not resolve: {err}".splitlines()[0]) from None
    trainer, data = cfg.trainer, cfg.data
    _positive_int(trainer.epochs, "trainer.epochs")
    _positive_int(trainer.batch_size, "trainer.batch_size")
    _positive_int(trainer.eval_batch_size, "trainer.eval_batch_size")
    _positive_int(trainer.checkpoint_every, "trainer.checkpoint_every", minimum=0)
    _positive_int(data.train_limit, "data.train_limit", optional=True)
    _positive_int(data.test_limit, "data.test_limit", optional=True)
    _positive_int(data.val_split, "data.val_split", minimum=0)
    if trainer.precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={trainer.precision!r} must be one of {', '.join(PRECISIONS)}")
    if not (_number(trainer.label_smoothing) and 0.0 <= trainer.label_smoothing < 1.0):
        raise ConfigError(f"trainer.label_smoothing={trainer.label_smoothing!r} must lie in [0, 1)")
    if not (_number(cfg.target_acc) and 0.0 < cfg.target_acc <= 1.0):
        raise ConfigError(f"target_acc={cfg.target_acc!r} must lie in (0, 1] (a fraction, e.g. 0.88)")
    lr = cfg.optimizer.get("lr")
    if not (_number(lr) and lr > 0):
        raise ConfigError(f"optimizer.lr={lr!r} must be a positive number")
    if cfg.scheduler:
        if cfg.scheduler.get("interval", "epoch") not in ("epoch", "step"):
            raise ConfigError(f"scheduler.interval={cfg.scheduler.interval!r} must be epoch or step")
        monitor = cfg.scheduler.get("monitor")
        if monitor is not None and monitor not in METRICS:
            raise ConfigError(f"scheduler.monitor={monitor!r} must be one of {', '.join(METRICS)}")
        if monitor and monitor.startswith("val_") and not data.val_split:
            raise ConfigError(f"scheduler.monitor={monitor} needs a validation split (set data.val_split=N)")
    if cfg.objective not in METRICS + ("best_test_acc", "best_val_acc"):
        raise ConfigError(f"objective={cfg.objective!r} is not a metric this project records")
    aug = cfg.augmentation
    _positive_int(aug.crop_padding, "augmentation.crop_padding", minimum=0)
    if aug.pad_mode not in ("zeros", "reflect"):
        raise ConfigError(f"augmentation.pad_mode={aug.pad_mode!r} must be zeros or reflect")
    _check_data(data)
    resolve_device(trainer.device)


DATA_SETS = ("cifar10", "cifar100", "image_folder")


def _number(value) -> bool:
    """``value`` is a finite int or float (not a bool, a string or NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(value, n: int) -> bool:
    """``value`` is a list of ``n`` finite numbers."""
    return isinstance(value, (list, tuple, ListConfig)) and len(value) == n and all(_number(v) for v in value)


def _check_data(data: DictConfig) -> None:
    """The data options: normalization (null = from the data) and, for an image folder, its settings."""
    if (data.mean is None) != (data.std is None):
        raise ConfigError("data.mean and data.std must both be set or both be null (null: computed from the data)")
    if data.mean is not None and not (_numbers(data.mean, 3) and _numbers(data.std, 3) and min(data.std) > 0):
        raise ConfigError("data.mean and data.std must be three numbers each, std > 0 (or both null)")
    _positive_int(data.num_classes, "data.num_classes", optional=True)
    name = data.get("name", "cifar10")
    if name not in DATA_SETS:
        raise ConfigError(f"data.name={name!r} must be one of {', '.join(DATA_SETS)}")
    if name != "image_folder":
        return
    if data.path is None or not str(data.path).strip():
        raise ConfigError("data.path is not set: data=image_folder needs data.path=<a folder of class folders>")
    _positive_int(data.image_size, "data.image_size")
    _positive_int(data.get("workers"), "data.workers", optional=True)
    _positive_int(data.split_seed, "data.split_seed", minimum=0)
    fraction = data.test_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ConfigError(f"data.test_fraction={fraction!r} must lie in (0, 1)")
    for key, allowed in (("resize", ("stretch", "crop")), ("bad_images", ("skip", "error"))):
        if data[key] not in allowed:
            raise ConfigError(f"data.{key}={data[key]!r} must be one of {', '.join(allowed)}")
