"""A sweep's comparison: the curves figure (test/train accuracy and loss per epoch, one line per run)
and a table (Markdown and CSV) of overrides, status, best test accuracy and its epoch, epochs and
training seconds to the target accuracy, final lr, wall time and images/s. The files are saved in a
folder, printed, and logged to a dedicated MLflow run of the same experiment (tags
``sweeplab.kind=report`` and ``sweeplab.report_for=<sweep id>``, no metrics, so metric searches never
pick it). Written after every multirun (sweeplab.sweep) and on demand (``python -m sweeplab.report``).
"""

from __future__ import annotations

import csv
import io
import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sweeplab import job, plots, tracking
from sweeplab.errors import ConfigError
from sweeplab.tracking import Run

REPORT_DIR_TAG = "sweeplab.report_dir"  # on the sweep's parent run: where the report's files were last written
FIGURE, TABLE_MD, TABLE_CSV = "comparison.png", "comparison.md", "comparison.csv"
ARTIFACT_DIR = "report"
# The table's columns, in order; CSV holds the raw values (MLflow's floats, exactly), Markdown rounds them.
COLUMNS = (
    "run",
    "overrides",
    "status",
    "best_test_acc",
    "best_epoch",
    "epochs_to_target",
    "train_time_to_target",
    "target_acc",
    "final_lr",
    "wall_time_s",
    "images_per_sec",
    "run_id",
    "failure",
)


# -- the report ---------------------------------------------------------------------------------
@dataclass
class Report:
    sweep_id: str
    rows: list[dict]
    histories: dict[str, list[dict]]
    out_dir: Path
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
    epochs_to_target = metrics.get("epochs_to_target")
    best_epoch = metrics.get("best_epoch")
    return {
        "run": run.name,
        "overrides": run.tags.get("sweeplab.overrides", ""),
        "status": PRUNED if run.pruned_at else run.status,
        "best_test_acc": metrics.get("best_test_acc"),
        "best_epoch": int(best_epoch) if best_epoch is not None else None,
        "epochs_to_target": int(epochs_to_target) if epochs_to_target is not None else None,
        "train_time_to_target": metrics.get("train_time_to_target"),
        "target_acc": float(run.params["target_acc"]) if "target_acc" in run.params else None,
        "final_lr": lrs[-1] if lrs else None,
        "wall_time_s": run.wall_time_s,
        "images_per_sec": sum(speeds) / len(speeds) if speeds else None,
        "run_id": run.run_id,
        "failure": f"pruned after epoch {run.pruned_at}" if run.pruned_at else run.tags.get(tracking.FAILURE_TAG, ""),
    }


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: "" if row[k] is None else (repr(row[k]) if isinstance(row[k], float) else row[k]) for k in COLUMNS}
        )
    return buf.getvalue()


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


def split_overrides(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The overrides every run shares, and each run's own; where-things-are overrides (store,
    paths, device) are left out: they say nothing about the experiment."""
    per_run = [job.experiment_overrides(r["overrides"].split()) for r in rows]
    common = [o for o in per_run[0] if all(o in other for other in per_run)] if len(rows) > 1 else []
    return common, [[o for o in own if o not in common] for own in per_run]


def to_markdown(rows: list[dict], sweep_id: str, experiment_id: str | None = None) -> str:
    targets = {r["target_acc"] for r in rows if r["target_acc"] is not None}
    target = f"epochs to {100 * targets.pop():g}%" if len(targets) == 1 else "epochs to target"
    head = ["run", "overrides", "status", "best test acc", "best epoch", target, "final lr", "wall time", "images/s"]
    common, own = split_overrides(rows)
    lines = [f"# Sweep {sweep_id}", ""]
    if common:
        lines += [f"All runs: `{' '.join(common)}`", ""]
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
    finished = [r for r in rows if r["status"] == "FINISHED" and r["best_test_acc"] is not None]
    lines.append("")
    if finished:
        best = max(finished, key=lambda r: r["best_test_acc"])
        lines.append(
            f"Best: **{best['run']}** with {100 * best['best_test_acc']:.2f}% test accuracy "
            f"at epoch {_fmt(best['best_epoch'], 'd')} (run `{best['run_id']}`)."
        )
    for r in rows:
        if r["status"] != "FINISHED":
            lines.append(f"- {r['run']} **{r['status']}**: {r['failure'] or 'no reason recorded'}")
    if experiment_id is not None:
        lines += [
            "",
            f"Compare in the MLflow UI: `<mlflow ui address>/{compare_link(experiment_id, rows)}`; "
            f"list the runs with the filter `tags.{tracking.SWEEP_TAG} = '{sweep_id}'`.",
        ]
    return "\n".join(lines) + "\n"


def comparison_figure(histories: dict[str, list[dict]], sweep_id: str, stopped=()):
    """The 2x2 figure (test acc, test loss, train acc, train loss), one line per run; pruned runs
    (labels in ``stopped``) dashed, ending in a cross."""
    fig = plots.curves_figure(histories, title=f"sweep {sweep_id}", stopped=stopped)
    for ax in fig.axes:
        ax.xaxis.get_major_locator().set_params(integer=True)  # epochs
    return fig


def compare_link(experiment_id: str, rows: list[dict]) -> str:
    """The MLflow UI page that compares these runs (parameter table, parallel coordinates over lr)."""
    ids = ",".join(f'"{r["run_id"]}"' for r in rows)
    return f'#/compare-runs?runs=[{ids}]&experiments=["{experiment_id}"]'


def build_report(experiment_id: str, sweep_id: str, out_dir: Path | None = None, log_to_mlflow: bool = True) -> Report:
    """Compare the runs of sweep ``sweep_id``: save figure and tables in ``out_dir`` (a temporary
    folder when None: then only MLflow keeps them) and log them to the sweep's report run."""
    runs = job_runs(experiment_id, sweep_id)
    if not runs:
        raise ConfigError(f"no runs of sweep {sweep_id} in experiment {experiment_id} of {tracking.tracking_uri()}")
    taken: set = set()
    rows, histories, stopped = [], {}, set()
    for run in runs:
        history = tracking.metric_history(run.run_id, HISTORY_KEYS)
        label = _label(run, taken)
        histories[label] = history
        if run.pruned_at:
            stopped.add(label)
        rows.append(table_row(run, history))

    keep = out_dir is not None
    out = Path(out_dir) if keep else Path(tempfile.mkdtemp(prefix="sweeplab-report-"))
    out.mkdir(parents=True, exist_ok=True)
    report = Report(sweep_id, rows, histories, out)
    report.files = {"figure": out / FIGURE, "markdown": out / TABLE_MD, "csv": out / TABLE_CSV}
    report.figure = comparison_figure(histories, sweep_id, stopped)
    plots.save(report.figure, report.files["figure"])
    markdown = to_markdown(rows, sweep_id, experiment_id)
    report.files["markdown"].write_text(markdown)
    report.files["csv"].write_text(to_csv(rows))
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
