"""Where a sweep's jobs run at once, checked before the first one starts (the sweep callback): how
many the launcher runs side by side, on which devices (``trainer.device=auto`` gives each its own card on
a machine with several GPUs; ``trainer.jobs_per_card`` lets that many share one), and whether that many
fit in a card's free memory. When not, one line (exit 2) that says what to change."""

from __future__ import annotations

import logging
import math
import zipfile

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sweeplab.data import card_free, device_bytes, format_bytes, free_memory
from sweeplab.device import resolve_device
from sweeplab.errors import ConfigError

log = logging.getLogger(__name__)

CONTEXT_BYTES = 768 * 2**20  # a process's CUDA context with cuDNN and cuBLAS loaded, about
CIFAR_SIZES = (50_000, 10_000)  # training and test images of CIFAR-10 and CIFAR-100


def parallel_jobs(config: DictConfig, jobs: int | None) -> tuple[int, str]:
    """How many of the sweep's ``jobs`` (None: not known up front) run at the same time on this machine,
    and the setting that says so; 0 for a cluster's launcher, whose jobs run where the cluster puts them."""
    launcher = config.hydra.get("launcher") or {}
    target = str(launcher.get("_target_", ""))
    if "slurm" in target.lower():
        return 0, "hydra/launcher=slurm"
    if target.endswith("JoblibLauncher"):
        from joblib import effective_n_jobs

        n, why = effective_n_jobs(launcher.get("n_jobs", -1)), f"hydra.launcher.n_jobs={launcher.get('n_jobs')}"
    elif target.endswith("LocalLauncher"):  # submitit_local starts every job at once
        n, why = jobs or 1, "hydra/launcher=submitit_local (every job at once)"
    else:
        n, why = 1, "the basic launcher (one job at a time)"
    batch = (config.hydra.get("sweeper") or {}).get("n_jobs")  # Optuna: trials asked for at a time
    if batch:
        n = min(n, int(batch))
    return (min(n, jobs) if jobs else n), why


def data_sizes(data: DictConfig) -> tuple[int, int, int, int]:
    """(train, test, validation images, image size) a job of this data config keeps on its device: an
    image folder's listing, an npz file's array headers (nothing else is read), else CIFAR's sizes."""
    if data.get("name", "cifar10") == "image_folder":
        from sweeplab.data import scan_image_folder

        plan = scan_image_folder(data.path, data.image_size, data.resize, data.test_fraction, data.split_seed)
        train, test, size = len(plan.train), len(plan.test), plan.image_size
    else:
        (train, test), size = CIFAR_SIZES, 32
        if data.get("npz"):
            try:
                train, size = npz_shape(data.npz, "train_images")[:2]
                test = npz_shape(data.npz, "test_images")[0]
            except (OSError, KeyError, ValueError, zipfile.BadZipFile):
                pass  # the job itself says what is wrong with the file
    train, test = min(train, data.train_limit or train), min(test, data.test_limit or test)
    val = min(int(data.val_split or 0), train)
    return train - val, test, val, size


def npz_shape(path: str, key: str) -> tuple[int, ...]:
    """The shape of array ``key`` in an npz file, from its header alone."""
    with zipfile.ZipFile(path) as z, z.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return tuple(read(f)[0])


def model_bytes(model_cfg: DictConfig, batch_size: int, image_size: int, element_size: int) -> tuple[int, int]:
    """(parameters, gradients and optimizer state; activations of a training batch), from the model
    built on the meta device (no memory, no compute): 4 copies of every parameter in fp32, and twice
    the outputs of every layer at the batch size (kept for the backward pass, then its gradients)."""
    fill = {"num_classes": 10} if model_cfg.get("num_classes", 0) is None else {}
    if "weights" in model_cfg:
        fill["weights"] = None  # the shapes are the same; nothing is read or downloaded
    outputs = 0

    def count(module, inputs, output):
        nonlocal outputs
        if isinstance(output, torch.Tensor):
            outputs += output.numel()

    with torch.device("meta"):
        model = instantiate(model_cfg, **fill)
    params = sum(p.numel() for p in model.parameters())
    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model.train()(torch.empty(batch_size, 3, image_size, image_size, device="meta"))
    for hook in hooks:
        hook.remove()
    return 4 * 4 * params, 2 * element_size * outputs


def job_bytes(cfg: DictConfig, device: torch.device) -> dict[str, int]:
    """About what one training job of ``cfg`` holds on ``device``: its data (uint8, with the padded and
    augmented copies), model, activations and, on CUDA, the process's context."""
    train, test, val, size = data_sizes(cfg.data)
    padding = int(cfg.augmentation.crop_padding) if cfg.get("augmentation") else 0
    precision = cfg.trainer.precision
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    try:
        model, activations = model_bytes(cfg.model, int(cfg.trainer.batch_size), size, 2 if bf16 else 4)
    except Exception as err:  # a model that cannot be built on the meta device: its data alone is counted
        log.warning(f"the memory check counts no model: it cannot be built on the meta device ({err})")
        model = activations = 0
    return {
        "data": device_bytes(train, test, val, size, padding),
        "model": model,
        "activations": activations,
        "context": CONTEXT_BYTES if device.type == "cuda" else 0,
    }


def job_cards(config: DictConfig) -> int:
    """The GPUs a job of this sweep sees: submitit_local shows each job its first ``gpus_per_node``."""
    launcher = config.hydra.get("launcher") or {}
    visible = torch.cuda.device_count()
    if str(launcher.get("_target_", "")).endswith("LocalLauncher"):
        return min(visible, int(launcher.get("gpus_per_node") or 0))
    return visible


def _footprint_key(cfg: DictConfig) -> str:
    """What a job's memory depends on."""
    parts = [cfg.data, cfg.model, cfg.get("augmentation"), cfg.trainer.batch_size, cfg.trainer.precision]
    return "\n".join(OmegaConf.to_yaml(p, resolve=True) if isinstance(p, DictConfig) else str(p) for p in parts)


def check_sweep(config: DictConfig, jobs: list[DictConfig]) -> None:
    """The sweep's jobs that run at once fit on this machine's devices, or a one-line ConfigError.

    ``jobs`` are the composed configs of every job (empty where a sweeper draws them as it goes: then
    ``config`` stands for each). With ``trainer.device=auto`` and several visible GPUs each job gets a
    card of its own (device.job_device); anywhere else the jobs that run at once share the one device.
    No more than ``trainer.jobs_per_card`` jobs share a card, and what they need together must fit in
    its free memory.
    """
    at_once, why = parallel_jobs(config, len(jobs) or None)
    if at_once < 2:
        return
    names = {str(c.trainer.device) for c in jobs or [config]}
    if len(names) > 1:  # the sweep places its jobs itself (trainer.device=cuda:0,cuda:1)
        return
    name = names.pop()
    device, per_card = resolve_device(name), int(config.trainer.get("jobs_per_card", 1))
    cards = job_cards(config) if device.type == "cuda" and name == "auto" else 1
    if cards == 0:  # auto, and the launcher gives its jobs no GPU
        device, cards = torch.device("cpu"), 1
    if device.type == "cuda" and at_once > cards * per_card:
        if cards > 1:
            place = f"this machine has {cards} GPUs"
        else:
            place = "this machine has one GPU" if name == "auto" else f"trainer.device={name} is one GPU"
        raise ConfigError(
            f"{why} runs {at_once} jobs at once but {place} and trainer.jobs_per_card={per_card}: run at most "
            f"{cards * per_card} at once, or let jobs share a card (trainer.jobs_per_card={math.ceil(at_once / cards)})"
        )
    if device.type == "cuda":
        indices = list(range(cards)) if cards > 1 else [device.index or 0]
        free, on = min(card_free(i) for i in indices), f"each of {cards} GPUs" if cards > 1 else f"cuda:{indices[0]}"
    else:
        free, on = free_memory(device), str(device)
    if free is None:  # a device that does not say
        return
    per_device = math.ceil(at_once / cards)
    distinct = {_footprint_key(c): c for c in jobs or [config]}.values()  # jobs that differ in their lr: one
    each = max((job_bytes(c, device) for c in distinct), key=lambda n: sum(n.values()))
    needed, parts = per_device * sum(each.values()), ", ".join(f"{k} {format_bytes(v)}" for k, v in each.items() if v)
    log.info(
        f"{at_once} jobs at once ({why}): {per_device} on {on}, about {format_bytes(needed)} of "
        f"{format_bytes(free)} free ({format_bytes(sum(each.values()))} a job: {parts})"
    )
    if needed > free:
        raise ConfigError(
            f"{why} runs {per_device} jobs at once on {on}: they need about {format_bytes(needed)} "
            f"({format_bytes(sum(each.values()))} each: {parts}) but only {format_bytes(free)} is free; run "
            f"fewer at once, or lower trainer.batch_size or the data (data.train_limit)"
        )
