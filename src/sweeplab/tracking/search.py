"""Finding runs: by id, by sweep, the latest sweep, the best run by a metric, a run's metric history."""

from __future__ import annotations

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sweeplab.errors import ConfigError
from sweeplab.tracking.configurations import choose_best
from sweeplab.tracking.records import KIND_TAG, SWEEP_TAG, Run, record_of
from sweeplab.tracking.store import tracking_uri


def _search(experiment_id: str, query: str = "", order_by=None, max_results: int = 10_000) -> list[Run]:
    runs = MlflowClient().search_runs([experiment_id], query, order_by=order_by, max_results=max_results)
    return [record_of(r) for r in runs]


def get_run(run_id: str) -> Run:
    """The run ``run_id`` (ConfigError naming the store when there is none)."""
    try:
        return record_of(MlflowClient().get_run(str(run_id)))
    except MlflowException:
        raise ConfigError(f"no run {run_id} in the MLflow store {tracking_uri()}") from None


def has_runs(experiment_id: str) -> bool:
    return bool(_search(experiment_id, max_results=1))


def all_runs(experiment_id: str) -> list[Run]:
    """Every run of an experiment, oldest first."""
    return _search(experiment_id, order_by=["attributes.start_time ASC"])


def sweep_runs(experiment_id: str, sweep_id: str) -> list[Run]:
    """All runs of one sweep, oldest first."""
    return _search(experiment_id, f"tags.`{SWEEP_TAG}` = '{sweep_id}'", ["attributes.start_time ASC"])


def sweep_parent(experiment_id: str, sweep_id: str) -> Run | None:
    """The parent run of a sweep (None for a sweep from before parent runs)."""
    query = f"tags.`{SWEEP_TAG}` = '{sweep_id}' and tags.`{KIND_TAG}` = 'sweep'"
    runs = _search(experiment_id, query, ["attributes.start_time DESC"], 1)
    return runs[0] if runs else None


def sweep_parents(experiment_id: str, tag: str, value: str) -> list[Run]:
    """The parent runs of the sweeps whose tag ``tag`` is ``value``, newest first."""
    query = f"tags.`{KIND_TAG}` = 'sweep' and tags.`{tag}` = '{value}'"
    return _search(experiment_id, query, ["attributes.start_time DESC"])


def latest_sweep(experiment_id: str) -> str | None:
    """The sweep id of the most recently started run that belongs to a sweep (None if none does)."""
    runs = _search(experiment_id, f"tags.`{SWEEP_TAG}` LIKE '%'", ["attributes.start_time DESC"], 1)
    return runs[0].tags[SWEEP_TAG] if runs else None


def best_run(experiment_id: str, metric: str, direction: str = "max", sweep_id: str | None = None) -> Run | None:
    """The best run of an experiment, or of one sweep, by ``metric`` (``direction`` max or min): the
    best run of the best configuration by mean (see sweeplab.tracking.configurations). None when no
    FINISHED run logged the metric."""
    query = "attributes.status = 'FINISHED'"
    if sweep_id:
        query += f" and tags.`{SWEEP_TAG}` = '{sweep_id}'"
    best = choose_best(_search(experiment_id, query), metric, direction)
    return best.best_run if best is not None else None


def metric_history(run_id: str, keys) -> list[dict]:
    """Per-epoch metrics as the engine's history: ``[{"epoch": 1, "test_acc": ..., ...}, ...]``."""
    client, by_step = MlflowClient(), {}
    for key in keys:
        for m in client.get_metric_history(run_id, key):
            by_step.setdefault(m.step, {"epoch": m.step})[key] = m.value
    return [by_step[s] for s in sorted(by_step)]


def metric_steps(run_id: str, key: str) -> set[int]:
    return {m.step for m in MlflowClient().get_metric_history(run_id, key)}
