"""Where things are: the repository root, whatever the working directory, and the configs' resolver for it."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from sweeplab.errors import ConfigError


def repo_root() -> Path:
    """The repository root, whatever the working directory (``SWEEPLAB_ROOT`` overrides it)."""
    if os.environ.get("SWEEPLAB_ROOT"):
        return Path(os.environ["SWEEPLAB_ROOT"]).resolve()
    here = Path(__file__).resolve().parents[2]  # src/sweeplab/paths.py -> root
    return here if (here / "conf").is_dir() else Path.cwd()


def store_folder(tracking) -> Path:
    """``tracking.store_dir`` (the local MLflow store and the sweeps' study file), resolved, and made
    when new: a run or a sweep may be a new store's first use (ConfigError when it cannot be made)."""
    folder = Path(tracking.store_dir).expanduser().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"tracking.store_dir={folder} cannot be created ({err.strerror or err})") from None
    return folder


def register_resolvers() -> None:
    """``${sweeplab_root:}`` in the configs; called on import of the package."""
    if not OmegaConf.has_resolver("sweeplab_root"):
        OmegaConf.register_new_resolver("sweeplab_root", lambda: str(repo_root()))
