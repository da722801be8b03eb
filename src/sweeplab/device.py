"""The training device a config names (``trainer.device``, ``device`` of explain.py)."""

from __future__ import annotations

import torch

from sweeplab.errors import ConfigError


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
