"""What the current Hydra job is: its command-line overrides, which of them define the experiment, and
the sweep it belongs to. The one rule for "which overrides define an experiment" lives here; run
names, the sweep command find_lr.py prints and the comparison tables all use it.

A multirun's facts (its id, its MLflow parent run, the keys it varies) are written by the sweep
callback into a file in the sweep folder, which every job reads from its own config's
``hydra.sweep.dir``: that reaches jobs in any launcher's processes (joblib's reused workers, submitit
on other machines), where environment variables set after the workers started would not.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from sweeplab.atomic import atomic_write

# What says where things are or how they run, not what the experiment is: whole config groups (a
# run reproduced or resumed from its saved config takes them from the current command) and single keys.
ENVIRONMENT_GROUPS = ("tracking", "paths")
ENVIRONMENT_KEYS = (
    *(f"{group}." for group in ENVIRONMENT_GROUPS),
    "hydra.",
    "data.npz",
    "data.root",
    "data.cache_dir",
    "data.workers",
    "trainer.device",
    "trainer.jobs_per_card",
    "trainer.progress",
    "task_name",
)

# The keys that choose a run's seed: a sweep's jobs that differ only in these are seeds of one configuration.
SEED_KEYS = ("trainer.seed", "seeds")

SWEEP_FILE = ".sweeplab/sweep.json"  # in the sweep folder: {"id", "parent_run_id", "swept", "study"}
RUN_FILE = ".sweeplab/run_id"  # in a job's folder: the MLflow run it logs to


def key_of(override: str) -> str:
    """``+a.b=1`` -> ``a.b``."""
    return override.split("=", 1)[0].lstrip("+~")


def is_environment_key(key: str) -> bool:
    """``key`` (``a.b``, no prefix) says where things are or how they run, not what the experiment is."""
    return key.startswith(ENVIRONMENT_KEYS) or key in ENVIRONMENT_GROUPS


def experiment_overrides(overrides: list[str], drop: tuple[str, ...] = ()) -> list[str]:
    """The overrides that define the experiment: without the environment keys (and ``drop`` prefixes)."""
    return [
        o for o in overrides if not (is_environment_key(key_of(o)) or key_of(o).startswith(drop)) and o != "(defaults)"
    ]


def grid(parsed) -> list[list[str]]:
    """The jobs of a grid sweep, from Hydra's parsed overrides: the product of the discrete sweeps
    (``a=1,2 b=x,y``: four jobs), in the order Hydra's basic sweeper runs them, each job as its
    ``key=value`` overrides (a key given twice: the last one)."""
    choices: dict[str, list[str]] = {}
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*choices.values())]


def overrides() -> list[str]:
    """The current job's command-line overrides (none outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def output_dir() -> Path | None:
    """The current Hydra job's folder (None outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None


def is_multirun() -> bool:
    """The current Hydra app runs a sweep (``-m``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _multirun_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().sweep.dir) if is_multirun() else None


def number() -> int | None:
    """The current multirun job's number (``hydra.job.num``; None outside a multirun)."""
    folder, num = multirun_job()
    return num if folder is not None else None


def multirun_job() -> tuple[Path | None, int]:
    """(the sweep folder, this job's number) in a multirun; (None, 0) otherwise."""
    from hydra.core.hydra_config import HydraConfig

    folder = _multirun_dir()
    return (folder, int(HydraConfig.get().job.num)) if folder is not None else (None, 0)


def write_sweep(sweep_dir: str | Path, **facts) -> dict:
    """Record (or update) the sweep's facts for its jobs; returns them all."""
    path = Path(sweep_dir) / SWEEP_FILE
    merged = {**(json.loads(path.read_text()) if path.is_file() else {}), **facts}
    with atomic_write(path, "w") as f:
        f.write(json.dumps(merged))
    return merged


def sweep(sweep_dir: str | Path | None = None) -> dict:
    """The current multirun's facts (empty outside a multirun or before the callback wrote them)."""
    sweep_dir = sweep_dir or _multirun_dir()
    path = Path(sweep_dir) / SWEEP_FILE if sweep_dir else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def sweep_id() -> str | None:
    return sweep().get("id")


def study_name() -> str | None:
    """The Optuna study whose trials the sweep's jobs are (None for a sweep without one)."""
    return sweep().get("study")


def parent_run_id() -> str | None:
    return sweep().get("parent_run_id")


def swept_keys() -> list[str]:
    return list(sweep().get("swept", []))


def run_name(job_overrides: list[str]) -> str:
    """A multirun job's swept values (its seed last), else the overrides that define the experiment,
    else "defaults"."""
    swept = swept_keys()
    keep = [o for o in job_overrides if key_of(o) in swept] or experiment_overrides(job_overrides)
    keep.sort(key=lambda o: key_of(o) in SEED_KEYS)  # the seed last: optimizer.lr=0.01 trainer.seed=2
    return " ".join(keep)[:250] or "defaults"


def configuration(job_overrides: list[str]) -> str:
    """What a job is a seed of: its run name without the seed (``optimizer.lr=0.01`` for the job
    ``optimizer.lr=0.01 trainer.seed=2``). A sweep's report compares configurations by their mean over
    seeds, and the MLflow UI groups runs by it (the tag ``sweeplab.configuration``)."""
    swept = [k for k in swept_keys() if k not in SEED_KEYS]
    own = [o for o in job_overrides if key_of(o) not in SEED_KEYS]
    keep = [o for o in own if key_of(o) in swept] or experiment_overrides(own)
    return " ".join(keep)[:250] or "defaults"


def seed_overrides(seeds: int | None) -> list[str]:
    """``seeds=N``, the shorthand for "each configuration with N seeds", as the override a grid expands:
    ``trainer.seed=range(1,N+1)``; none when null."""
    if seeds is None:
        return []
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds={seeds!r} must be an integer >= 1 (or null)")
    return [f"trainer.seed=range(1,{seeds + 1})"]


def note_run(run_id: str) -> None:
    """Note in the job's folder which MLflow run it logs to (a requeued job finds it there)."""
    out = output_dir()
    if out is not None:
        (out / RUN_FILE).parent.mkdir(parents=True, exist_ok=True)
        (out / RUN_FILE).write_text(run_id + "\n")


def noted_run(job_dir: str | Path | None = None) -> str | None:
    """The MLflow run a job folder (default: the current job's) logged to, if it got that far."""
    path = Path(job_dir or output_dir() or ".") / RUN_FILE
    return path.read_text().strip() or None if path.is_file() else None
