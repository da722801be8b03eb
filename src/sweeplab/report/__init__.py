"""A sweep's comparison: the curves figure (test/train accuracy and loss per epoch, one line per run;
with seeds, one mean line per configuration with its spread as a band), a table (Markdown and CSV)
of the runs (overrides, status, best test accuracy and its epoch, epochs and training seconds to the
target accuracy, final lr and test loss, wall time, images/s) and, with seeds, of the configurations
(mean ± standard deviation over their seeds), and a verdict on seed noise (sweeplab.report.noise).
The files are saved in a folder, printed, and logged to the sweep's parent run (artifacts ``report/``;
the table is also the parent's description in the MLflow UI; a sweep from before parent runs gets one,
its runs become its children). Written after every multirun (sweeplab.sweep) and on demand
(``python -m sweeplab.report``, report/command.py).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sweeplab import job, plots, tracking
from sweeplab.errors import ConfigError
from sweeplab.report.noise import Verdict, verdict
from sweeplab.report.noise import value as show
from sweeplab.tracking import Configuration, Run

REPORT_DIR_TAG = "sweeplab.report_dir"  # on the sweep's parent run: where the report's files were last written
FIGURE, TABLE_MD, TABLE_CSV = "comparison.png", "comparison.md", "comparison.csv"
CONFIGURATIONS_CSV = "configurations.csv"
ARTIFACT_DIR = "report"
# The table's columns, in order; CSV holds the raw values (MLflow's floats, exactly), Markdown rounds them.
COLUMNS = (
    "run",
    "overrides",
    "configuration",
    "seed",
    "status",
    "best_test_acc",
    "best_epoch",
    "epochs_to_target",
    "train_time_to_target",
    "target_acc",
    "final_lr",
    "final_test_loss",
    "wall_time_s",
    "images_per_sec",
    "run_id",
    "failure",
)
# Per configuration: how many runs, how many failed, and the mean and standard deviation over its
# finished runs of each of these (epochs and time to target over the runs that reached it).
SPREAD = ("best_test_acc", "epochs_to_target", "train_time_to_target", "final_test_loss")
CONFIGURATION_COLUMNS = (
    "configuration",
    "runs",
    "finished",
    *(f"{key}_{stat}" for key in SPREAD for stat in ("mean", "std")),
    "reached_target",
    "best_run",
    "best_run_id",
)


# -- the report ---------------------------------------------------------------------------------
@dataclass
class Report:
    sweep_id: str
    rows: list[dict]
    histories: dict[str, list[dict]]
    out_dir: Path
    configurations: list[dict] = field(default_factory=list)  # with seeds: one row per configuration, best first
    verdict: Verdict | None = None
    run_id: str | None = None  # the sweep's parent run, where the report was logged
    files: dict[str, Path] = field(default_factory=dict)
    figure: object = None  # the matplotlib Figure (saved and closed)

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] not in ("FINISHED", PRUNED)]


HISTORY_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "images_per_sec")
PRUNED = "PRUNED"  # the table's status of a run a sweep's pruner stopped (its MLflow status is KILLED)


def job_runs(experiment_id: str, sweep_id: str) -> list[Run]:
    """The jobs' runs of a sweep, oldest first (not its parent run)."""
    return [r for r in tracking.sweep_runs(experiment_id, sweep_id) if r.tags.get(tracking.KIND_TAG) != "sweep"]


def _label(run: Run, taken: set) -> str:
    label = run.name or run.run_id[:8]
    if label in taken:
        label = f"{label} [{run.run_id[:8]}]"
    taken.add(label)
    if run.pruned_at:
        return f"{label} (pruned at epoch {run.pruned_at})"
    return label + ("" if run.status == "FINISHED" else f" ({run.status})")


def table_row(run: Run, history: list[dict]) -> dict:
    """One run's row. Values come from MLflow as they are: run-level metrics, the last epoch's lr,
    the mean of the per-epoch images/s, the run's start-to-end time."""
    metrics = run.metrics
    speeds = [h["images_per_sec"] for h in history if "images_per_sec" in h]
    lrs = [h["lr"] for h in history if "lr" in h]
    losses = [h["test_loss"] for h in history if "test_loss" in h]
    epochs_to_target = metrics.get("epochs_to_target")
    best_epoch = metrics.get("best_epoch")
    return {
        "run": run.name,
        "overrides": run.tags.get("sweeplab.overrides", ""),
        "configuration": tracking.configuration_of(run),
        "seed": run.tags.get(tracking.SEED_TAG, run.params.get("trainer.seed", "")),
        "status": PRUNED if run.pruned_at else run.status,
        "best_test_acc": metrics.get("best_test_acc"),
        "best_epoch": int(best_epoch) if best_epoch is not None else None,
        "epochs_to_target": int(epochs_to_target) if epochs_to_target is not None else None,
        "train_time_to_target": metrics.get("train_time_to_target"),
        "target_acc": float(run.params["target_acc"]) if "target_acc" in run.params else None,
        "final_lr": lrs[-1] if lrs else None,
        "final_test_loss": losses[-1] if losses else None,
        "wall_time_s": run.wall_time_s,
        "images_per_sec": sum(speeds) / len(speeds) if speeds else None,
        "run_id": run.run_id,
        "failure": f"pruned after epoch {run.pruned_at}" if run.pruned_at else run.tags.get(tracking.FAILURE_TAG, ""),
    }


def to_csv(rows: list[dict], columns=COLUMNS) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: "" if row[k] is None else (repr(row[k]) if isinstance(row[k], float) else row[k]) for k in columns}
        )
    return buf.getvalue()


# -- configurations -----------------------------------------------------------------------------
def _spread(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None where there are too few values)."""
    return (
        statistics.fmean(values) if values else None,
        statistics.stdev(values) if len(values) > 1 else None,
    )


def configuration_rows(rows: list[dict], ranked: list[Configuration], metric: str) -> list[dict]:
    """One row per configuration, in ``ranked``'s order (best mean first; configurations without a
    finished run last): its runs, and the mean and spread of SPREAD (and of ``metric``) over its
    finished runs."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["configuration"], []).append(row)
    best_runs = {c.name: c.best_run for c in ranked}
    order = [c.name for c in ranked] + [name for name in groups if name not in best_runs]
    out = []
    for name in order:
        finished = [r for r in groups[name] if r["status"] == "FINISHED"]
        row = {"configuration": name, "runs": len(groups[name]), "finished": len(finished)}
        for key in dict.fromkeys((*SPREAD, metric)):
            values = [r[key] for r in finished if r.get(key) is not None]
            row[f"{key}_mean"], row[f"{key}_std"] = _spread(values)
        row["reached_target"] = sum(r["epochs_to_target"] is not None for r in finished)
        best = best_runs.get(name)
        row["best_run"], row["best_run_id"] = (best.name, best.run_id) if best else (None, None)
        out.append(row)
    return out


def is_seeded(ranked: list[Configuration]) -> bool:
    """Some configuration has more than one finished run: the report compares configurations."""
    return any(c.n > 1 for c in ranked)


# -- Markdown -----------------------------------------------------------------------------------
def _to_target(row: dict) -> str:
    """``16 (23.4 s)``: the epoch that reached the target and the training seconds it took."""
    if row["epochs_to_target"] is None:
        return "not reached"
    seconds = row["train_time_to_target"]
    return f"{row['epochs_to_target']}" + (f" ({seconds:.1f} s)" if seconds is not None else "")


def _fmt(value, spec: str, missing: str = "–") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def _mean_std(row: dict, key: str, spec: str, unit: str = "") -> str:
    """``2.50 ± 0.71 s`` (the mean alone for one value; ``–`` for none)."""
    mean, std = row[f"{key}_mean"], row[f"{key}_std"]
    if mean is None:
        return "–"
    return _fmt(mean, spec) + (f" ± {_fmt(std, spec)}" if std is not None else "") + unit


def _reached(row: dict, key: str, spec: str, unit: str = "") -> str:
    """Epochs or time to target over the runs that reached it, and how many did when not all."""
    if not row["reached_target"]:
        return "not reached"
    shown = _mean_std(row, key, spec, unit)
    return shown + (
        "" if row["reached_target"] == row["finished"] else f" ({row['reached_target']} of {row['finished']})"
    )


def split_overrides(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The overrides every run shares, and each run's own; where-things-are overrides (store,
    paths, device) are left out: they say nothing about the experiment."""
    per_run = [job.experiment_overrides(r["overrides"].split()) for r in rows]
    common = [o for o in per_run[0] if all(o in other for other in per_run)] if len(rows) > 1 else []
    return common, [[o for o in own if o not in common] for own in per_run]


def _target_header(rows: list[dict]) -> str:
    targets = {r["target_acc"] for r in rows if r["target_acc"] is not None}
    return f"{100 * targets.pop():g}%" if len(targets) == 1 else "target"


def configurations_markdown(configurations: list[dict], metric: str, target: str) -> list[str]:
    head = ["configuration", "runs", "best test acc", f"epochs to {target}", f"train time to {target}"]
    head += ["final test loss"] + ([metric] if metric not in SPREAD else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in configurations:
        failed = c["runs"] - c["finished"]
        cells = [
            f"`{c['configuration']}`",
            f"{c['finished']}" + (f" (+{failed} failed)" if failed else ""),
            show("best_test_acc", c["best_test_acc_mean"], c["best_test_acc_std"]),
            _reached(c, "epochs_to_target", ".1f"),
            _reached(c, "train_time_to_target", ".1f", " s"),
            _mean_std(c, "final_test_loss", ".3f"),
        ] + ([show(metric, c[f"{metric}_mean"], c[f"{metric}_std"])] if metric not in SPREAD else [])
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
    return lines


def best_line(rows: list[dict], best: Configuration | None, metric: str, seeded: bool) -> str:
    """The sweep's best, as sweeplab.tracking.choose_best chose it: a configuration with seeds, else a run."""
    if best is None:
        return f"Best: none (no run finished with {metric})."
    run = best.best_run
    row = next(r for r in rows if r["run_id"] == run.run_id)
    at = f" at epoch {_fmt(row['best_epoch'], 'd')}" if metric == "best_test_acc" else ""
    what = "test accuracy" if metric == "best_test_acc" else metric
    if not seeded:
        return f"Best: **{run.name}** with {show(metric, run.metrics[metric])} {what}{at} (run `{run.run_id}`)."
    return (
        f"Best configuration: **{best.name}** with {show(metric, best.mean, best.std)} {what} over {best.n} "
        f"seeds (mean ± standard deviation); its best run: **{run.name}**, {show(metric, run.metrics[metric])}"
        f"{at} (run `{run.run_id}`)."
    )


def to_markdown(
    rows: list[dict],
    sweep_id: str,
    experiment_id: str | None = None,
    ranked: list[Configuration] | None = None,
    metric: str = "best_test_acc",
) -> str:
    ranked = ranked if ranked is not None else []
    seeded = is_seeded(ranked)
    target = _target_header(rows)
    head = ["run", "overrides", "status", "best test acc", "best epoch", f"epochs to {target}", "final lr"]
    head += ["wall time", "images/s"]
    common, own = split_overrides(rows)
    lines = [f"# Sweep {sweep_id}", ""]
    if common:
        lines += [f"All runs: `{' '.join(common)}`", ""]
    said = verdict(ranked).text
    if seeded:
        lines += ["## Configurations: mean ± standard deviation over seeds", ""]
        lines += configurations_markdown(configuration_rows(rows, ranked, metric), metric, target)
        lines += ["", f"**Verdict:** {said}", "", best_line(rows, ranked[0], metric, seeded), "", "## Runs", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r, overrides in zip(rows, own):
        status = r["status"] if r["status"] == "FINISHED" else f"**{r['status']}**"
        cells = [
            r["run"],
            f"`{' '.join(overrides)}`" if overrides else "(defaults)",
            status,
            _fmt(None if r["best_test_acc"] is None else 100 * r["best_test_acc"], ".2f")
            + "%" * (r["best_test_acc"] is not None),
            _fmt(r["best_epoch"], "d"),
            _to_target(r),
            _fmt(r["final_lr"], ".3g"),
            _fmt(r["wall_time_s"], ".1f") + " s" * (r["wall_time_s"] is not None),
            _fmt(r["images_per_sec"], ".0f"),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines.append("")
    if not seeded:
        lines += [best_line(rows, ranked[0] if ranked else None, metric, seeded), "", f"**Verdict:** {said}"]
    for r in rows:
        if r["status"] != "FINISHED":
            lines.append(f"- {r['run']} **{r['status']}**: {r['failure'] or 'no reason recorded'}")
    if experiment_id is not None:
        lines += [
            *([""] if lines[-1] else []),
            f"Compare in the MLflow UI: `<mlflow ui address>/{compare_link(experiment_id, rows)}`; "
            f"list the runs with the filter `tags.{tracking.SWEEP_TAG} = '{sweep_id}'`"
            + (
                f' and "Group by" the tag `{tracking.CONFIGURATION_TAG}` for one row per configuration.'
                if seeded
                else "."
            ),
        ]
    return "\n".join(lines) + "\n"


# -- the figure ---------------------------------------------------------------------------------
CURVE_KEYS = ("test_acc", "test_loss", "train_acc", "train_loss")


def mean_curves(histories: list[list[dict]]) -> list[dict]:
    """Per epoch, the mean of each curve over the runs that reached that epoch, and its standard
    deviation as ``<key>_std`` where two or more did."""
    by_epoch: dict[int, dict[str, list[float]]] = {}
    for history in histories:
        for h in history:
            for key in CURVE_KEYS:
                if key in h:
                    by_epoch.setdefault(h["epoch"], {}).setdefault(key, []).append(h[key])
    out = []
    for epoch in sorted(by_epoch):
        point = {"epoch": epoch}
        for key, values in by_epoch[epoch].items():
            point[key], std = _spread(values)
            if std is not None:
                point[f"{key}_std"] = std
        out.append(point)
    return out


def comparison_figure(histories: dict[str, list[dict]], sweep_id: str, stopped=()):
    """The 2x2 figure (test acc, test loss, train acc, train loss), one line per run, or per
    configuration (its mean, with a band of ± one standard deviation); pruned runs (labels in
    ``stopped``) dashed, ending in a cross."""
    fig = plots.curves_figure(histories, title=f"sweep {sweep_id}", stopped=stopped)
    for ax in fig.axes:
        ax.xaxis.get_major_locator().set_params(integer=True)  # epochs
    return fig


def compare_link(experiment_id: str, rows: list[dict]) -> str:
    """The MLflow UI page that compares these runs (parameter table, parallel coordinates over lr)."""
    ids = ",".join(f'"{r["run_id"]}"' for r in rows)
    return f'#/compare-runs?runs=[{ids}]&experiments=["{experiment_id}"]'


def build_report(
    experiment_id: str,
    sweep_id: str,
    out_dir: Path | None = None,
    log_to_mlflow: bool = True,
    metric: str = "best_test_acc",
    direction: str = "max",
) -> Report:
    """Compare the runs of sweep ``sweep_id`` (configurations ranked by the mean of ``metric`` in
    ``direction``, the sweep's own choice): save figure and tables in ``out_dir`` (a temporary
    folder when None: then only MLflow keeps them) and log them to the sweep's parent run."""
    runs = job_runs(experiment_id, sweep_id)
    if not runs:
        raise ConfigError(f"no runs of sweep {sweep_id} in experiment {experiment_id} of {tracking.tracking_uri()}")
    taken: set = set()
    rows, histories, curves, stopped = [], {}, {}, set()
    for run in runs:
        history = tracking.metric_history(run.run_id, HISTORY_KEYS)
        label = _label(run, taken)
        histories[label] = history
        if run.pruned_at:
            stopped.add(label)
        rows.append(table_row(run, history))
        curves.setdefault(rows[-1]["configuration"], []).append(history)
    ranked = tracking.configurations(runs, metric, direction)
    seeded = is_seeded(ranked)
    if seeded:  # one curve per configuration, best first
        names = [c.name for c in ranked] + [n for n in curves if n not in {c.name for c in ranked}]
        figure_curves = {
            f"{n} ({len(curves[n])} run{'s' * (len(curves[n]) > 1)})": mean_curves(curves[n]) for n in names
        }
    else:
        figure_curves = histories

    keep = out_dir is not None
    out = Path(out_dir) if keep else Path(tempfile.mkdtemp(prefix="sweeplab-report-"))
    out.mkdir(parents=True, exist_ok=True)
    report = Report(sweep_id, rows, histories, out, verdict=verdict(ranked))
    report.files = {"figure": out / FIGURE, "markdown": out / TABLE_MD, "csv": out / TABLE_CSV}
    report.figure = comparison_figure(figure_curves, sweep_id, () if seeded else stopped)
    plots.save(report.figure, report.files["figure"])
    markdown = to_markdown(rows, sweep_id, experiment_id, ranked, metric)
    report.files["markdown"].write_text(markdown)
    report.files["csv"].write_text(to_csv(rows))
    if seeded:
        report.configurations = configuration_rows(rows, ranked, metric)
        columns = CONFIGURATION_COLUMNS + tuple(f"{metric}_{s}" for s in ("mean", "std") if metric not in SPREAD)
        report.files["configurations"] = out / CONFIGURATIONS_CSV
        report.files["configurations"].write_text(to_csv(report.configurations, columns))
    if log_to_mlflow:
        report.run_id = log_report(experiment_id, report, markdown, out if keep else None)
    if not keep:
        for path in report.files.values():
            path.unlink()
        out.rmdir()
    return report


def log_report(experiment_id: str, report: Report, markdown: str, out_dir: Path | None) -> str:
    """Log the files to the sweep's parent run (a sweep from before parent runs gets one, and its
    runs become its children). The table is also the parent's description, so the MLflow UI shows
    it on the run's overview page."""
    parent = tracking.sweep_parent(experiment_id, report.sweep_id)
    if parent is None:
        run_id = tracking.create_run(
            experiment_id, f"sweep {report.sweep_id}", {tracking.SWEEP_TAG: report.sweep_id, tracking.KIND_TAG: "sweep"}
        )
        for row in report.rows:
            tracking.set_tags({tracking.PARENT_TAG: run_id}, row["run_id"])
        tracking.end_run(run_id, "FAILED" if report.failed else "FINISHED")
    else:
        run_id = parent.run_id
    tags = {tracking.NOTE_TAG: markdown[:60000]}
    if out_dir is not None:
        tags[REPORT_DIR_TAG] = str(out_dir.resolve())
    tracking.set_tags(tags, run_id)
    tracking.log_files(report.files.values(), ARTIFACT_DIR, run_id)
    return run_id


def announce(report: Report, stream=None) -> None:
    stream = stream or sys.stdout
    print(report.files["markdown"].read_text() if report.files["markdown"].exists() else "", file=stream)
    if report.out_dir.exists():
        print(
            f"report: {report.files['figure']}, {report.files['markdown'].name}, {report.files['csv'].name}",
            file=stream,
        )
    if report.run_id:
        print(
            f"report: the sweep's MLflow run {report.run_id} (artifacts under {ARTIFACT_DIR}/)", file=stream, flush=True
        )
