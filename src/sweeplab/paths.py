"""Where things are: the repository root, whatever the working directory, and the configs' resolver for it."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf


def repo_root() -> Path:
    """The repository root, whatever the working directory (``SWEEPLAB_ROOT`` overrides it)."""
    if os.environ.get("SWEEPLAB_ROOT"):
        return Path(os.environ["SWEEPLAB_ROOT"]).resolve()
    here = Path(__file__).resolve().parents[2]  # src/sweeplab/paths.py -> root
    return here if (here / "conf").is_dir() else Path.cwd()


def register_resolvers() -> None:
    """``${sweeplab_root:}`` in the configs; called on import of the package."""
    if not OmegaConf.has_resolver("sweeplab_root"):
        OmegaConf.register_new_resolver("sweeplab_root", lambda: str(repo_root()))
