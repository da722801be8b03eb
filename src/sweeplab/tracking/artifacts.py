"""A run's files: what it holds, a download, and the config it saved."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from sweeplab.errors import ConfigError
from sweeplab.tracking.search import get_run


def artifact_names(run_id: str, folder: str) -> set[str]:
    """The names of the files in a run's artifact ``folder`` (empty when there is none)."""
    try:
        return {Path(f.path).name for f in MlflowClient().list_artifacts(run_id, folder)}
    except (MlflowException, OSError):
        return set()


def download(run_id: str, artifact_path: str, dst: str | Path) -> Path:
    """A run's artifact, downloaded into ``dst`` (ConfigError when it cannot be)."""
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dst)))
    except (MlflowException, OSError) as err:
        raise ConfigError(f"cannot download {artifact_path} of run {run_id}: {str(err).splitlines()[0]}") from None


def saved_config(run_id: str) -> DictConfig:
    """The composed config a run saved (``config/config.yaml``), without its defaults list."""
    get_run(run_id)
    if "config.yaml" not in artifact_names(run_id, "config"):
        raise ConfigError(f"run {run_id} has no saved config (config/config.yaml)")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = OmegaConf.load(download(run_id, "config/config.yaml", tmp))
    cfg.pop("defaults", None)
    return cfg
