"""The one best-run choice, over ``Run`` records: runs grouped into configurations (what a sweep
varies but the seed, the tag ``sweeplab.configuration``), configurations ranked by the mean of a
metric over their finished runs, and the best one's best run. Without seeds every configuration is
one run and this is simply the best run. A sweep's end (what it registers), explain.py, Optuna's
result and the report all choose with it."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from sweeplab.tracking.records import CONFIGURATION_TAG, KIND_TAG, SWEEP_TAG, Run

DIRECTIONS = ("max", "min")


@dataclass(frozen=True)
class Configuration:
    """One configuration's runs that count: FINISHED, with a finite value of ``metric``; newest first."""

    name: str
    runs: tuple[Run, ...]
    metric: str
    direction: str

    @property
    def values(self) -> list[float]:
        return [r.metrics[self.metric] for r in self.runs]

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        """The sample standard deviation over its runs (None for a single run)."""
        return statistics.stdev(self.values) if self.n > 1 else None

    @property
    def best_run(self) -> Run:
        """Its run with the best value (ties: the newest): what a sweep registers."""
        pick = max if self.direction == "max" else min
        return pick(self.runs, key=lambda r: r.metrics[self.metric])


def configuration_of(run: Run) -> str:
    """A run's configuration: its tag; for runs from before the tag, its name without the seed."""
    if CONFIGURATION_TAG in run.tags:
        return run.tags[CONFIGURATION_TAG]
    return " ".join(p for p in run.name.split() if not p.startswith(("trainer.seed=", "seeds="))) or run.run_id


def counts(run: Run, metric: str) -> bool:
    """A run that can be the best: a FINISHED job (not a sweep's parent) with a finite ``metric``."""
    value = run.metrics.get(metric)
    return (
        run.status == "FINISHED"
        and run.tags.get(KIND_TAG) != "sweep"
        and isinstance(value, (int, float))
        and math.isfinite(value)
    )


def configurations(runs: list[Run], metric: str, direction: str = "max") -> list[Configuration]:
    """The configurations of ``runs`` that have a run that counts, best mean first (ties: the one
    with the newest run). Configurations are named within their sweep: runs of different sweeps, or
    of none, never share one."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r} must be one of {', '.join(DIRECTIONS)}")
    groups: dict[tuple, list[Run]] = {}
    for run in sorted(runs, key=lambda r: r.start_time or 0, reverse=True):  # newest first
        if counts(run, metric):
            sweep = run.tags.get(SWEEP_TAG)
            key = (sweep, configuration_of(run)) if sweep else (None, run.run_id)
            groups.setdefault(key, []).append(run)
    found = [Configuration(configuration_of(rs[0]), tuple(rs), metric, direction) for rs in groups.values()]
    return sorted(found, key=lambda c: c.mean, reverse=direction == "max")  # stable: ties keep newest first


def choose_best(runs: list[Run], metric: str, direction: str = "max") -> Configuration | None:
    """The best configuration by mean (its ``best_run`` is the best run); None when no run counts."""
    ranked = configurations(runs, metric, direction)
    return ranked[0] if ranked else None
