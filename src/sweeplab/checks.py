"""The one place a config is checked, before any data is loaded or any run is created: a training
run's config (``check_run``), and the extra options of find_lr.py (``check_lr_finder``) and
explain.py (``check_explain``). Each check raises ConfigError with one line naming the key."""

from __future__ import annotations

import math

from omegaconf import DictConfig, ListConfig, OmegaConf

from sweeplab.device import resolve_device
from sweeplab.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")
METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "val_loss", "val_acc")
OBJECTIVES = METRICS + ("best_test_acc", "best_val_acc")
DATA_SETS = ("cifar10", "cifar100", "image_folder")
RESIZE_MODES = ("stretch", "crop")
BAD_IMAGES = ("skip", "error")
STEP_MODES = ("exp", "linear")
VAL_SOURCES = ("none", "test", "val")
CAM_TARGETS = ("predicted", "true")


# -- the checkers -------------------------------------------------------------------------------
def is_number(value) -> bool:
    """``value`` is a finite int or float (not a bool, a string or NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def number(value, key: str) -> float:
    if not is_number(value):
        raise ConfigError(f"{key}={value!r} must be a number")
    return float(value)


def integer(value, key: str, minimum: int = 1, optional: bool = False) -> None:
    """An int >= ``minimum`` (``optional``: or None)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value!r} must be an integer >= {minimum}" + (" (or null)" if optional else ""))


def boolean(value, key: str, optional: bool = False) -> None:
    """true or false (``optional``: or null)."""
    if not (isinstance(value, bool) or (value is None and optional)):
        raise ConfigError(f"{key}={value!r} must be true or false" + (" (or null)" if optional else ""))


def text(value, key: str, optional: bool = False) -> None:
    """A non-empty string (``optional``: any string, or null; empty means unset, as an unset
    environment variable that the config reads gives)."""
    if optional and (value is None or isinstance(value, str)):
        return
    if not (isinstance(value, str) and value.strip()):
        raise ConfigError(f"{key}={value!r} must be a non-empty string" + (" (or null)" if optional else ""))


def one_of(value, key: str, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} must be one of {', '.join(map(str, allowed))}")


def _numbers(value, n: int) -> bool:
    """``value`` is a list of ``n`` finite numbers."""
    return isinstance(value, (list, tuple, ListConfig)) and len(value) == n and all(is_number(v) for v in value)


# -- a training run -----------------------------------------------------------------------------
def check_run(cfg: DictConfig) -> None:
    """Everything about a run that can be checked without loading data; ConfigError on the first problem."""
    try:
        OmegaConf.resolve(OmegaConf.create(OmegaConf.to_container(cfg, resolve=False)))
    except Exception as err:  # a broken interpolation or a missing mandatory value
        raise ConfigError(f"the config does not resolve: {err}".splitlines()[0]) from None
    trainer, data = cfg.trainer, cfg.data
    integer(trainer.epochs, "trainer.epochs")
    integer(trainer.batch_size, "trainer.batch_size")
    integer(trainer.eval_batch_size, "trainer.eval_batch_size")
    integer(trainer.checkpoint_every, "trainer.checkpoint_every", minimum=0)
    integer(data.train_limit, "data.train_limit", optional=True)
    integer(data.test_limit, "data.test_limit", optional=True)
    integer(data.val_split, "data.val_split", minimum=0)
    integer(cfg.get("seeds"), "seeds", optional=True)
    one_of(trainer.precision, "trainer.precision", PRECISIONS)
    if not (is_number(trainer.label_smoothing) and 0.0 <= trainer.label_smoothing < 1.0):
        raise ConfigError(f"trainer.label_smoothing={trainer.label_smoothing!r} must lie in [0, 1)")
    if not (is_number(cfg.target_acc) and 0.0 < cfg.target_acc <= 1.0):
        raise ConfigError(f"target_acc={cfg.target_acc!r} must lie in (0, 1] (a fraction, e.g. 0.88)")
    lr = cfg.optimizer.get("lr")
    if not (is_number(lr) and lr > 0):
        raise ConfigError(f"optimizer.lr={lr!r} must be a positive number")
    if cfg.scheduler:
        one_of(cfg.scheduler.get("interval", "epoch"), "scheduler.interval", ("epoch", "step"))
        monitor = cfg.scheduler.get("monitor")
        if monitor is not None:
            one_of(monitor, "scheduler.monitor", METRICS)
        if monitor and monitor.startswith("val_") and not data.val_split:
            raise ConfigError(f"scheduler.monitor={monitor} needs a validation split (set data.val_split=N)")
    if cfg.objective not in OBJECTIVES:
        raise ConfigError(f"objective={cfg.objective!r} is not a metric this project records")
    check_early_stopping(trainer.get("early_stopping"), data)
    aug = cfg.augmentation
    integer(aug.crop_padding, "augmentation.crop_padding", minimum=0)
    one_of(aug.pad_mode, "augmentation.pad_mode", ("zeros", "reflect"))
    boolean(aug.flip, "augmentation.flip")
    check_data(data)
    check_set_up(cfg)
    device = resolve_device(trainer.device)
    graph = trainer.get("cuda_graph", "auto")  # .get: a run saved before the key existed
    one_of(graph, "trainer.cuda_graph", ("auto", True, False))
    if graph is True and trainer.compile:
        raise ConfigError("trainer.cuda_graph=true and trainer.compile=true: choose one (auto is off when compiling)")
    if graph is True and device.type != "cuda":
        raise ConfigError(f"trainer.cuda_graph=true needs a CUDA device, not {device} (use auto or false)")
    integer(trainer.get("jobs_per_card", 1), "trainer.jobs_per_card")


def check_set_up(cfg: DictConfig) -> None:
    """What a run's set-up reads before its pieces are built or its run exists: the trainer's switches
    and seed, where things are (paths) and the store (tracking)."""
    trainer = cfg.trainer
    integer(trainer.seed, "trainer.seed", minimum=0)
    for key in ("deterministic", "compile", "drop_last", "tta_flip"):
        boolean(trainer[key], f"trainer.{key}")
    boolean(trainer.progress, "trainer.progress", optional=True)
    one_of(trainer.channels_last, "trainer.channels_last", ("auto", True, False))
    if not isinstance(trainer.get("callbacks") or {}, (dict, DictConfig)):
        raise ConfigError(f"trainer.callbacks={trainer.callbacks!r} must be a mapping of name: {{_target_: ...}}")
    for key in ("root", "data_dir", "log_dir", "checkpoint_dir"):
        text(cfg.paths.get(key), f"paths.{key}")
    check_tracking(cfg.tracking)


def check_tracking(tracking: DictConfig) -> None:
    """The ``tracking`` group: the store, the experiment, what is recorded and registered."""
    text(tracking.uri, "tracking.uri", optional=True)
    text(tracking.store_dir, "tracking.store_dir")
    text(tracking.experiment, "tracking.experiment")
    text(tracking.get("run_name"), "tracking.run_name", optional=True)
    boolean(tracking.get("system_metrics", False), "tracking.system_metrics")
    interval = tracking.get("system_metrics_interval", 10)
    if not (is_number(interval) and interval > 0):
        raise ConfigError(f"tracking.system_metrics_interval={interval!r} must be a positive number of seconds")
    text(tracking.best_metric, "tracking.best_metric")
    one_of(tracking.best_direction, "tracking.best_direction", ("max", "min"))
    boolean(tracking.get("register", True), "tracking.register")
    text(tracking.get("registered_model"), "tracking.registered_model", optional=True)
    keys = tracking.get("secret_keys") or []
    if not (isinstance(keys, (list, ListConfig)) and all(isinstance(k, str) and k.strip() for k in keys)):
        raise ConfigError(f"tracking.secret_keys={keys!r} must be a list of config keys, e.g. [data.token]")


def check_early_stopping(stopping: DictConfig | None, data: DictConfig) -> None:
    """``trainer.early_stopping``: off (patience null), or a patience on a per-epoch metric."""
    if not stopping or stopping.get("patience") is None:
        return
    integer(stopping.patience, "trainer.early_stopping.patience")
    one_of(stopping.get("monitor"), "trainer.early_stopping.monitor", METRICS)
    if stopping.monitor.startswith("val_") and not data.val_split:
        raise ConfigError(
            f"trainer.early_stopping.monitor={stopping.monitor} needs a validation split (set data.val_split=N)"
        )
    if not (is_number(stopping.get("min_delta")) and stopping.min_delta >= 0):
        raise ConfigError(f"trainer.early_stopping.min_delta={stopping.get('min_delta')!r} must be a number >= 0")


def check_data(data: DictConfig) -> None:
    """The data options: normalization (null = from the data) and, for an image folder, its settings."""
    if (data.mean is None) != (data.std is None):
        raise ConfigError("data.mean and data.std must both be set or both be null (null: computed from the data)")
    if data.mean is not None and not (_numbers(data.mean, 3) and _numbers(data.std, 3) and min(data.std) > 0):
        raise ConfigError("data.mean and data.std must be three numbers each, std > 0 (or both null)")
    integer(data.num_classes, "data.num_classes", optional=True)
    name = data.get("name", "cifar10")
    one_of(name, "data.name", DATA_SETS)
    if name != "image_folder":
        text(data.get("root"), "data.root")
        text(data.get("npz"), "data.npz", optional=True)
        boolean(data.get("download", False), "data.download")
        return
    if data.path is None or not str(data.path).strip():
        raise ConfigError("data.path is not set: data=image_folder needs data.path=<a folder of class folders>")
    text(data.path, "data.path")
    integer(data.image_size, "data.image_size")
    integer(data.get("workers"), "data.workers", optional=True)
    integer(data.split_seed, "data.split_seed", minimum=0)
    fraction = data.test_fraction
    if not (is_number(fraction) and 0 < fraction < 1):
        raise ConfigError(f"data.test_fraction={fraction!r} must lie in (0, 1)")
    one_of(data.resize, "data.resize", RESIZE_MODES)
    one_of(data.bad_images, "data.bad_images", BAD_IMAGES)
    text(data.cache_dir, "data.cache_dir")


# -- find_lr.py ---------------------------------------------------------------------------------
def min_steps(lr_finder: DictConfig) -> int:
    """The fewest recorded steps the library's suggestion works with (``plot`` skips start and end)."""
    return int(lr_finder.skip_start) + int(lr_finder.skip_end) + 2


def val_source(lr_finder: DictConfig) -> str:
    return "none" if lr_finder.val is None or lr_finder.val is False else str(lr_finder.val)


def check_lr_finder(cfg: DictConfig) -> None:
    """A run's checks, then the lr_finder group."""
    check_run(cfg)
    lr_finder = cfg.get("lr_finder")
    if lr_finder is None:
        raise ConfigError("the config has no lr_finder group (run find_lr.py, or add lr_finder=default)")
    start, end = number(lr_finder.start_lr, "lr_finder.start_lr"), number(lr_finder.end_lr, "lr_finder.end_lr")
    if start <= 0:
        raise ConfigError(f"lr_finder.start_lr={lr_finder.start_lr} must be positive")
    if start >= end:
        raise ConfigError(f"lr_finder.start_lr={lr_finder.start_lr} must be below lr_finder.end_lr={lr_finder.end_lr}")
    integer(lr_finder.runs, "lr_finder.runs", 1)
    integer(lr_finder.seed, "lr_finder.seed", 0)
    integer(lr_finder.skip_start, "lr_finder.skip_start", 0)
    integer(lr_finder.skip_end, "lr_finder.skip_end", 0)
    integer(lr_finder.num_iter, "lr_finder.num_iter", 2)
    if lr_finder.num_iter < min_steps(lr_finder):
        raise ConfigError(
            f"lr_finder.num_iter={lr_finder.num_iter} is too few iterations for a suggestion: the "
            f"library skips the first {lr_finder.skip_start} and last {lr_finder.skip_end} steps and needs "
            f"at least {min_steps(lr_finder)} (raise lr_finder.num_iter or lower lr_finder.skip_start)"
        )
    one_of(lr_finder.step_mode, "lr_finder.step_mode", STEP_MODES)
    if not 0.0 <= number(lr_finder.smooth_f, "lr_finder.smooth_f") < 1.0:
        raise ConfigError(f"lr_finder.smooth_f={lr_finder.smooth_f} must lie in [0, 1)")
    if not number(lr_finder.diverge_th, "lr_finder.diverge_th") > 1.0:
        raise ConfigError(f"lr_finder.diverge_th={lr_finder.diverge_th} must be above 1 (a multiple of the best loss)")
    val = val_source(lr_finder)
    one_of(val, "lr_finder.val", VAL_SOURCES)
    if val == "val" and not cfg.data.val_split:
        raise ConfigError("lr_finder.val=val needs a held-out split (set data.val_split=N)")
    integer(lr_finder.val_subset, "lr_finder.val_subset", 1, optional=True)


# -- explain.py ---------------------------------------------------------------------------------
def cam_target(cfg: DictConfig) -> str:
    """``target=true`` reaches the config as the YAML boolean."""
    return "true" if cfg.target is True else str(cfg.target)


def check_explain(cfg: DictConfig) -> None:
    """explain.py's own options, before the store is touched (the CAM method's name is checked
    against the library's list by sweeplab.explain)."""
    import re

    for key in ("num_images", "cols", "batch_size"):
        integer(cfg[key], key)
    integer(cfg.rows, "rows", optional=True)
    if cfg.rows is not None and cfg.rows * cfg.cols < cfg.num_images:
        raise ConfigError(
            f"a {cfg.rows}x{cfg.cols} grid holds fewer than num_images={cfg.num_images} "
            f"images; set rows=null or a larger grid"
        )
    one_of(cfg.direction, "direction", ("max", "min"))
    one_of(cam_target(cfg), "target", CAM_TARGETS)
    check_tracking(cfg.tracking)
    for key in ("model_uri", "run_id", "sweep", "metric"):
        if cfg[key] is not None and not re.fullmatch(r"[\w.\-:/@ ]+", str(cfg[key])):
            raise ConfigError(f"{key}={cfg[key]!r} contains characters an MLflow id or metric name cannot")
    resolve_device(cfg.device)
