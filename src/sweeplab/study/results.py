"""A study's outcome: the best trial, the trials table and Optuna's own figures."""

from __future__ import annotations

import logging
import warnings

import optuna
from optuna.trial import TrialState

from sweeplab.study.storage import RUN_ATTR

log = logging.getLogger(__name__)


def results(study: optuna.Study) -> dict:
    """The study's best trial (number, value, params, MLflow run) and its trials counted by state."""
    trials = study.get_trials(deepcopy=False)
    out = {"trials": len(trials)}
    for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING):
        out[state.name.lower()] = sum(t.state == state for t in trials)
    if out["complete"]:
        best = study.best_trial
        out["best"] = {
            "number": best.number,
            "value": best.value,
            "params": dict(best.params),
            "run_id": best.user_attrs.get(RUN_ATTR),
        }
    return out


def trials_csv(study: optuna.Study) -> str:
    """Every trial: number, state, value, params, its MLflow run, start and end (Optuna's own table)."""
    attrs = ("number", "state", "value", "params", "user_attrs", "datetime_start", "datetime_complete")
    table = study.trials_dataframe(attrs=attrs)
    return table.to_csv(index=False)


def figures(study: optuna.Study) -> dict:
    """Optuna's own figures (matplotlib): optimization history, parameter importances, intermediate
    values. One that the study cannot draw yet (importances need two finished trials) is left out."""
    import matplotlib
    from optuna.visualization import matplotlib as plots

    out = {}
    for name, draw in (
        ("optimization_history", plots.plot_optimization_history),
        ("param_importances", plots.plot_param_importances),
        ("intermediate_values", plots.plot_intermediate_values),
    ):
        try:  # Optuna sets its own matplotlib style: for its figures only, not the project's
            with warnings.catch_warnings(), matplotlib.rc_context():
                warnings.simplefilter("ignore")
                axes = draw(study)
            out[name] = axes.figure
        except Exception as err:
            log.info(f"no {name} figure: {str(err).splitlines()[0][:200] if str(err) else type(err).__name__}")
    return out
