"""What the current Hydra job is: its command-line overrides, which of them define the experiment, and
the sweep it belongs to. The one rule for "which overrides define an experiment" lives here; run
names, the sweep command find_lr.py prints and the comparison tables all use it."""

from __future__ import annotations

import os
from pathlib import Path

# Overrides that say where things are or how they run, not what the experiment is.
ENVIRONMENT_KEYS = (
    "tracking.",
    "paths.",
    "data.npz",
    "data.root",
    "trainer.device",
    "trainer.progress",
    "hydra.",
    "task_name",
)

# Set by the sweep callback for every job of a multirun; environment variables reach every launcher's workers.
SWEEP_ENV = "SWEEPLAB_SWEEP_ID"  # the sweep id (MLflow tag sweeplab.sweep)
SWEPT_ENV = "SWEEPLAB_SWEPT_KEYS"  # the keys the sweep varies, comma-separated


def key_of(override: str) -> str:
    """``+a.b=1`` -> ``a.b``."""
    return override.split("=", 1)[0].lstrip("+~")


def experiment_overrides(overrides: list[str], drop: tuple[str, ...] = ()) -> list[str]:
    """The overrides that define the experiment: without the environment keys (and ``drop`` prefixes)."""
    return [o for o in overrides if not key_of(o).startswith(ENVIRONMENT_KEYS + drop) and o != "(defaults)"]


def overrides() -> list[str]:
    """The current job's command-line overrides (none outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def output_dir() -> Path | None:
    """The current Hydra job's folder (None outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None


def sweep_id() -> str | None:
    return os.environ.get(SWEEP_ENV) or None


def swept_keys() -> list[str]:
    return [k for k in os.environ.get(SWEPT_ENV, "").split(",") if k]


def run_name(job_overrides: list[str]) -> str:
    """A multirun job's swept values, else the overrides that define the experiment, else "defaults"."""
    swept = swept_keys()
    keep = [o for o in job_overrides if key_of(o) in swept] or experiment_overrides(job_overrides)
    return " ".join(keep)[:250] or "defaults"
