"""The training device a config names (``trainer.device``, ``device`` of explain.py), and the card of
each parallel job of a sweep on a machine with several GPUs."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from sweeplab.errors import ConfigError

log = logging.getLogger(__name__)

CLAIMS = ".sweeplab/cards"  # in the sweep folder: one lock file per card and place on it


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


def job_device(
    name: str, sweep_dir: str | Path | None = None, job_num: int = 0, jobs_per_card: int = 1
) -> torch.device:
    """A job's device: ``resolve_device(name)``, except that ``auto`` in a sweep on a machine with several
    GPUs claims a card of its own for the job (``claim_card``) and logs which. One claim per process: a
    worker that runs the next job (joblib reuses its workers) gives up the last one's first."""
    device = resolve_device(name)
    cards = torch.cuda.device_count() if device.type == "cuda" else 0
    if str(name) != "auto" or sweep_dir is None or cards < 2:
        return device
    key = (str(Path(sweep_dir).resolve()), job_num)
    if _held and _held[0] == key:
        return torch.device("cuda", _held[1].card)
    release_card()
    claim = claim_card(Path(sweep_dir) / CLAIMS, job_num, cards, jobs_per_card)
    _held[:] = [key, claim]
    device = torch.device("cuda", claim.card)
    shared = f", up to {jobs_per_card} jobs of the sweep on it" if jobs_per_card > 1 else ", its own"
    log.info(f"job {job_num}: {device} ({torch.cuda.get_device_name(device)}) of {cards} GPUs{shared}")
    return device


_held: list = []  # this process's claim: [(sweep folder, job number), Claim]


class Claim:
    """A place on a card, held (a lock file's OS lock) until released or the process ends."""

    def __init__(self, card: int, slot: int, lock: FileLock):
        self.card, self.slot, self.lock = card, slot, lock

    def release(self) -> None:
        self.lock.release()


def claim_card(folder: Path, job_num: int, cards: int, jobs_per_card: int = 1) -> Claim:
    """The first free place among ``cards`` GPUs, ``jobs_per_card`` places each: first the job's own card
    by its number (job n: card n mod cards), then the next ones, one job per card before any card takes a
    second. Free means no other process of the sweep holds its lock, so a job that ended, crashed or was
    killed frees its card. More jobs at once than places is a ConfigError (the sweep callback has
    refused that before the first job: a launcher it cannot read gets here)."""
    folder.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()  # a sweep folder on a shared disk: cards are per machine
    order = [(job_num + i) % cards for i in range(cards)]
    for slot in range(jobs_per_card):
        for card in order:
            lock = FileLock(folder / f"{host}-cuda{card}-{slot}.lock")
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            return Claim(card, slot, lock)
    raise ConfigError(
        f"all {cards} GPUs already run trainer.jobs_per_card={jobs_per_card} job(s) of this sweep: run fewer "
        f"jobs at once, or let more share a card (trainer.jobs_per_card={jobs_per_card + 1})"
    )


def release_card() -> None:
    """Give up this process's card (at the end of its job)."""
    if _held:
        _held.pop().release()
        _held.clear()


def device_label(device: torch.device) -> str:
    """``cuda:1 (NVIDIA H200)``, ``cpu``: what a run records of where it trained."""
    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
