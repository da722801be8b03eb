"""Where a run comes from: its config as params, git state, versions and device as tags, its data as
MLflow dataset inputs; ``record_start`` records it all in one call."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from sweeplab.paths import repo_root
from sweeplab.tracking.logger import log_folder, log_params, log_text, set_tags
from sweeplab.tracking.records import SEED_TAG, SWEEP_TAG, DataInput, RunStart
from sweeplab.tracking.store import duplicate_key, quiet


def flatten(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as ``a.b.c -> value`` strings (MLflow params)."""
    out: dict[str, str] = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = str(node)[:6000]

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def git_state(root: Path | None = None) -> dict:
    """Commit, dirty flag and diff of the repository the code runs from (empty outside git)."""
    root = root or repo_root()

    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)

    try:
        head = git("rev-parse", "HEAD")
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if head.returncode:
        return {}
    diff = git("diff", "HEAD").stdout
    untracked = git("ls-files", "--others", "--exclude-standard").stdout.strip()
    return {"commit": head.stdout.strip(), "dirty": bool(diff.strip() or untracked), "diff": diff}


@functools.cache
def environment() -> dict[str, str]:
    """Versions, host and device (package versions from their metadata: importing torchvision takes seconds)."""
    from importlib.metadata import version

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    versions = {
        name: version(dist)
        for name, dist in (("torchvision", "torchvision"), ("hydra", "hydra-core"), ("mlflow", "mlflow"))
    }
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        **versions,
        "host": platform.node(),
        "device_name": device,
        "cpu_count": str(os.cpu_count()),
    }


def tags_for(seed: int, overrides: list[str], sweep_id: str | None, git: dict) -> dict[str, str]:
    """Where a run comes from: overrides, seed, sweep, git commit, versions and device."""
    tags = {"sweeplab.overrides": " ".join(overrides) or "(defaults)", SEED_TAG: str(seed)}
    if sweep_id:
        tags[SWEEP_TAG] = sweep_id
    if git:
        tags.update({"mlflow.source.git.commit": git["commit"], "sweeplab.git_dirty": str(git["dirty"])})
    tags.update({f"sweeplab.env.{k}": v for k, v in environment().items()})
    tags["mlflow.source.name"] = Path(sys.argv[0]).name
    return tags


MAX_DIGEST = 36  # MLflow's limit for a dataset digest


def log_dataset(data: DataInput) -> None:
    """A data set as an MLflow dataset input of the active run (the UI's Datasets column): its name,
    digest (our sha256, cut to MLflow's 36 characters; the whole one is a tag), source (a file or
    a download URL), and its shape and size from the arrays (numpy, not copied or hashed again)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    with quiet():  # MLflow registers its local-file source twice and says so
        source = resolve_dataset_source(data.source)
    dataset = mlflow.data.from_numpy(
        data.images, targets=data.labels, name=data.name, digest=data.sha256[:MAX_DIGEST], source=source
    )
    tags = {"sha256": data.sha256, **data.tags}
    try:
        mlflow.log_input(dataset, context=data.context, tags=tags)
    except MlflowException as err:
        # Parallel jobs of a sweep on a server with a PostgreSQL store: both find the dataset new and
        # insert it, the second is refused (duplicate key). Now it exists: link it again.
        if not duplicate_key(err):
            raise
        mlflow.log_input(dataset, context=data.context, tags=tags)


def record_start(start: RunStart) -> None:
    """The active run's record of where it comes from, in one call: params, tags, dataset inputs,
    texts and folders (secrets masked on the way in, as everything logged here)."""
    log_params(start.params)
    set_tags(start.tags)
    for data in start.datasets:
        log_dataset(data)
    for artifact_file, text in start.texts.items():
        log_text(text, artifact_file)
    for folder, local in start.folders.items():
        log_folder(local, folder)
