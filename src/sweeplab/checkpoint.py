"""Checkpoint files: written atomically, read with a clear error."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from sweeplab.atomic import atomic_write
from sweeplab.errors import ConfigError, first_line


class CheckpointError(ConfigError):
    """A checkpoint that is missing, truncated or not ours."""


def save(state: dict, path: str | Path) -> Path:
    """Write ``state`` atomically: a kill at any moment leaves either the old file or the new one."""
    with atomic_write(path) as f:
        torch.save(state, f)
    return Path(path)


def load(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({first_line(err)})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path} holds no model state (not written by sweeplab?)")
    return state
