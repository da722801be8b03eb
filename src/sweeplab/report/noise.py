"""A verdict on seed noise: does a sweep's best configuration beat the runner-up by more than its
seeds alone vary? The difference of the two means with its standard error, and Welch's t-test
(scipy.stats.ttest_ind, unequal variances) on their runs' values. Also how values and spreads are
written: accuracies in percent and their differences in points, other metrics as they are."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sweeplab.tracking import Configuration

TEST = "Welch's t-test"
ALPHA = 0.05  # below this p-value a difference counts as more than seed noise
HOW_TO_GET_ONE = "run each configuration with several seeds (seeds=3, or trainer.seed=1,2,3) to get one"


@dataclass(frozen=True)
class Verdict:
    text: str
    p_value: float | None = None
    difference: float | None = None  # best mean minus runner-up mean, in the metric's own units
    standard_error: float | None = None


def is_fraction(metric: str) -> bool:
    """Accuracies are logged as fractions and shown in percent."""
    return metric.endswith("_acc")


def value(metric: str, x: float | None, std: float | None = None) -> str:
    """``45.00%`` / ``45.00 ± 1.41%`` for an accuracy; ``1.234`` / ``1.234 ± 0.05`` otherwise."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if is_fraction(metric):
        return f"{100 * x:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "") + "%"
    return f"{x:.4g}" + (f" ± {std:.2g}" if std is not None else "")


def difference(metric: str, d: float, se: float | None = None) -> str:
    """``+1.25 ± 0.40 points`` for an accuracy (percentage points), ``-0.0123 ± 0.004`` otherwise."""
    if is_fraction(metric):
        return f"{100 * d:+.2f}" + (f" ± {100 * se:.2f}" if se is not None else "") + " points"
    return f"{d:+.4g}" + (f" ± {se:.2g}" if se is not None else "")


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def _seeds(a: Configuration, b: Configuration) -> str:
    return f"{a.n} seeds each" if a.n == b.n else f"{a.n} vs {b.n} seeds"


def verdict(ranked: list[Configuration]) -> Verdict:
    """The verdict on ``ranked`` (sweeplab.tracking.configurations: best mean first), in words."""
    if not ranked:
        return Verdict("No verdict: no run finished with a value to compare.")
    best = ranked[0]
    metric = best.metric
    if len(ranked) == 1:
        if best.n > 1:
            return Verdict(
                f"One configuration ({best.name}): {metric} {value(metric, best.mean, best.std)} over {best.n} "
                f"seeds; nothing to compare it with."
            )
        return Verdict(f"No verdict: one configuration with one run ({best.name}); nothing to compare.")
    second = ranked[1]
    versus = f"{best.name} vs {second.name}"
    d = best.mean - second.mean
    if min(best.n, second.n) < 2:
        runs = "one run each" if best.n == second.n == 1 else f"{best.n} vs {second.n} runs"
        return Verdict(
            f"No verdict possible: {versus}: {difference(metric, d)} of {metric} with {runs}, which cannot "
            f"tell a difference from seed noise; {HOW_TO_GET_ONE}.",
            difference=d,
        )
    from scipy.stats import ttest_ind

    se = math.sqrt(best.std**2 / best.n + second.std**2 / second.n)
    p = float(ttest_ind(best.values, second.values, equal_var=False).pvalue)
    said = f"{versus}: {difference(metric, d, se)} of {metric} (difference of means ± its standard error)"
    if not math.isfinite(p):  # no spread within either configuration: nothing to test against
        return Verdict(
            f"{said}; every seed of each gave the same value, so {TEST} is undefined ({_seeds(best, second)}).",
            None,
            d,
            se,
        )
    if p < ALPHA:
        call = f"a difference beyond seed noise at the {ALPHA:.0%} level ({TEST}: {_p(p)}, {_seeds(best, second)})"
    else:
        call = f"not distinguishable from seed noise ({TEST}: {_p(p)}, {_seeds(best, second)})"
    return Verdict(f"{said}: {call}.", p, d, se)
