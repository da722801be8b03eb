"""What a run records: params, metrics, tags, texts, files and figures, and the engine callback that
logs each epoch."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sweeplab.engine import Callback
from sweeplab.tracking.lifecycle import current_run_id
from sweeplab.tracking.secrets import clean, clean_files

log = logging.getLogger(__name__)


def log_params(params: dict, run_id: str | None = None) -> None:
    """Params as strings (MLflow's client batches them)."""
    MlflowClient().log_batch(current_run_id(run_id), params=[Param(k, clean(v)[:6000]) for k, v in params.items()])


def log_metrics(metrics: dict, step: int = 0, run_id: str | None = None) -> None:
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
    MlflowClient().log_batch(current_run_id(run_id), metrics=batch)


def log_series(key: str, values, run_id: str | None = None) -> None:
    """One metric over steps 0, 1, 2, ... (e.g. a loss curve)."""
    now = int(time.time() * 1000)
    MlflowClient().log_batch(
        current_run_id(run_id), metrics=[Metric(key, float(v), now, s) for s, v in enumerate(values)]
    )


def set_tags(tags: dict, run_id: str | None = None) -> None:
    MlflowClient().log_batch(current_run_id(run_id), tags=[RunTag(k, clean(v)) for k, v in tags.items()])


def delete_tags(keys, run_id: str | None = None) -> None:
    """Remove tags that no longer hold (those the run does not have are skipped)."""
    client, run_id = MlflowClient(), current_run_id(run_id)
    for key in set(keys) & set(client.get_run(run_id).data.tags):
        client.delete_tag(run_id, key)


def log_text(text: str, artifact_file: str, run_id: str | None = None) -> None:
    MlflowClient().log_text(current_run_id(run_id), clean(text), artifact_file)


def log_files(paths, folder: str | None = None, run_id: str | None = None) -> None:
    """Files (text files with their secrets masked) under ``folder``, in one upload."""
    with clean_files(paths) as files, tempfile.TemporaryDirectory() as tmp:
        for path in files:
            shutil.copy2(path, Path(tmp) / Path(path).name)
        MlflowClient().log_artifacts(current_run_id(run_id), tmp, folder)


def log_folder(path: str | Path, folder: str | None = None, run_id: str | None = None) -> None:
    """Every file below ``path``, under ``folder`` (text files masked as in log_files), in one upload."""
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    with clean_files(files) as cleaned, tempfile.TemporaryDirectory() as tmp:
        for original, path in zip(files, cleaned):
            copy = Path(tmp) / original.relative_to(root)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, copy)
        MlflowClient().log_artifacts(current_run_id(run_id), tmp, folder)


def log_figure(figure, artifact_file: str, run_id: str | None = None) -> None:
    """A matplotlib figure as a PNG artifact, at the project's 100 dpi; the figure is closed."""
    import matplotlib.pyplot as plt

    try:
        MlflowClient().log_figure(current_run_id(run_id), figure, artifact_file, save_kwargs={"dpi": 100})
    finally:
        plt.close(figure)


class MlflowLogger(Callback):
    """Logs each epoch's metrics with ``step=epoch``, in one request per epoch, from a background
    thread (the next epoch never waits on the store). A write the store refused (a server out of
    database connections answers HTTP 400, which MLflow's client does not retry) is written again,
    synchronously, when it is found: at the next epoch, or at ``flush()`` (the end of the fit, also
    of one that was stopped), which waits for every write."""

    def __init__(self, run_id: str):
        self.client, self.run_id = MlflowClient(), run_id
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweeplab-metrics")  # in order
        self.pending: list = []  # (future, batch) of writes not yet known to have landed

    def on_fit_start(self, trainer) -> None:
        """On resume: log the checkpointed epochs a kill kept from reaching MLflow (never twice)."""
        if not trainer.history:  # a new run: nothing to look up
            return
        logged = {m.step for m in self.client.get_metric_history(self.run_id, "test_acc")}
        for metrics in trainer.history:
            if metrics["epoch"] not in logged:
                self.on_epoch_end(trainer, metrics)

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        now = int(time.time() * 1000)
        step = metrics["epoch"]
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if k != "epoch"]
        self._settle(wait=False)
        # What a crash loses before it is written, a resume logs again from the checkpoint.
        self.pending.append((self.writer.submit(self.client.log_batch, self.run_id, metrics=batch), batch))

    def on_fit_end(self, trainer) -> None:
        self.flush()
        log_metrics(trainer.summary(), run_id=self.run_id)

    def flush(self) -> None:
        """Wait for every write so far (redoing refused ones)."""
        self._settle(wait=True)

    def _settle(self, wait: bool) -> None:
        """Check the background writes that are done (all of them with ``wait``); redo refused ones."""
        still = []
        for future, batch in self.pending:
            if not wait and not future.done():
                still.append((future, batch))
                continue
            err = future.exception()
            if err is not None:
                if not isinstance(err, MlflowException):
                    raise err
                log.warning(
                    f"the store refused an epoch's metrics ({str(err).splitlines()[0][:200]}); writing them again"
                )
                self.client.log_batch(self.run_id, metrics=batch)  # synchronous: fails the run if it fails again
        self.pending = still
