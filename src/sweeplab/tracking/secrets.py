"""Secrets kept out of MLflow and the logs: credentials in URIs and the values of ``tracking.secret_keys``."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig

from sweeplab import redact

_secrets: list[str] = []  # what protect() found; every text that goes through this door is masked
TEXT_FILES = {".yaml", ".yml", ".txt", ".log", ".md", ".csv", ".json", ".patch", ".ini", ".cfg"}


def protect(cfg: DictConfig) -> list[str]:
    """Find the secrets of ``cfg`` (credentials in URIs, e.g. tracking.uri, and the values of the keys
    listed in ``tracking.secret_keys``) and keep them out of MLflow and the logs: every param, tag,
    text and text file logged here is masked, and so is every log record of this process."""
    keys = list(cfg.tracking.get("secret_keys") or []) if "tracking" in cfg else []
    found = redact.secret_values(cfg, keys) + _study_storage_secrets()
    _secrets[:] = sorted({*_secrets, *found}, key=len, reverse=True)
    redact.install_log_redaction(_secrets)
    if found:
        # MLflow prints each run's address, credentials included, straight to stdout: not with secrets about.
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        # Hydra wrote the command line into the job's folder before the task began (a multirun's own
        # config, before its jobs, has no job folder).
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf

        output_dir = OmegaConf.select(HydraConfig.get(), "runtime.output_dir") if HydraConfig.initialized() else None
        if output_dir:
            for path in (Path(output_dir) / str(HydraConfig.get().output_subdir)).glob("*.yaml"):
                path.write_text(clean(path.read_text()))
    return found


def _study_storage_secrets() -> list[str]:
    """The password of a sweep's study storage (``hydra.sweeper.storage``, e.g. PostgreSQL's): a Hydra
    key, so not in a job's own config, and yet in Hydra's record of the job and the job's logs."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    storage = OmegaConf.select(HydraConfig.get(), "sweeper.storage") if HydraConfig.initialized() else None
    return redact.uri_secrets(str(storage)) if storage else []


def masked_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` without its secrets, still rerunnable (they are read from the environment again)."""
    keys = list(cfg.tracking.get("secret_keys") or []) if "tracking" in cfg else []
    return redact.mask_config(cfg, keys)


def clean(text) -> str:
    return redact.redact(str(text), _secrets)


@contextmanager
def clean_files(paths):
    """The files as they may be logged: text files copied with their secrets masked, others as they are."""
    with tempfile.TemporaryDirectory() as tmp:
        out = []
        for path in map(Path, paths):
            if path.suffix in TEXT_FILES and path.is_file():
                text = path.read_text(errors="replace")
                if clean(text) != text:
                    path = Path(tmp) / str(len(out)) / path.name
                    path.parent.mkdir()
                    path.write_text(clean(text))
            out.append(path)
        yield out
