"""Sweep bookkeeping and comparison.

* ``SweepCallback`` (set in conf/hydra/default.yaml) tags every job of a multirun with one sweep
  id, writes the sweep's comparison report when the last job has run, and turns failed jobs into
  the command's exit code.
* ``build_report`` compares the runs of one sweep: the seed's 2x2 curves figure (one line per run)
  and a table (Markdown and CSV) of overrides, status, best test accuracy and its epoch, epochs to
  the target accuracy, final lr, wall time and images/s. The files are saved in a folder, printed,
  and logged to a dedicated MLflow run of the same experiment (tags ``sweeplab.kind=report`` and
  ``sweeplab.report_for=<sweep id>``, no metrics, so metric searches never pick it).
* On demand, for any earlier sweep::

      python -m sweeplab.report                       # the latest sweep of the default store
      python -m sweeplab.report sweep=<id> out=reports/ tracking.store_dir=/path/to/mlruns
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sweeplab import tracking
from sweeplab.run import ENVIRONMENT_KEYS, FAILED_MARKER, SWEEP_ENV, SWEPT_ENV
from sweeplab.settings import ConfigError, validate

log = logging.getLogger(__name__)

KIND_TAG = "sweeplab.kind"  # "report" on a report run
REPORT_FOR_TAG = "sweeplab.report_for"  # the sweep id a report run compares
REPORT_DIR_TAG = "sweeplab.report_dir"  # where the report's files were last written
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


def new_sweep_id() -> str:
    return f"{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def validate_jobs(config: DictConfig, parsed) -> None:
    """Compose and check every job of a grid sweep before the first one starts: a bad value in
    the fifth job should not surface after four jobs of training. Searches whose jobs a sweeper
    draws as it goes (Optuna's ranges) are checked job by job instead."""
    if any(o.is_sweep_override() and not o.is_discrete_sweep() for o in parsed):
        return
    loader = GlobalHydra.instance().config_loader()
    for batch in BasicSweeper.split_arguments(parsed, None):
        for job in batch:
            try:
                validate(loader.load_sweep_config(config, list(job)))
            except ConfigError as err:
                raise ConfigError(f"job {' '.join(job)}: {err}") from None


# -- the report ---------------------------------------------------------------------------------
@dataclass
class Report:
    sweep_id: str
    rows: list[dict]
    histories: dict[str, list[dict]]
    out_dir: Path
    run_id: str | None = None  # the MLflow report run
    files: dict[str, Path] = field(default_factory=dict)
    figure: object = None  # the matplotlib Figure (saved and closed)

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] != "FINISHED"]


def job_runs(experiment_id: str, sweep_id: str, client=None) -> list:
    """The training runs of a sweep, oldest first (report runs carry no sweep tag, but be safe)."""
    if client is None:
        runs = tracking.sweep_runs(experiment_id, sweep_id)
    else:
        runs = client.search_runs(
            [experiment_id],
            f"tags.`{tracking.SWEEP_TAG}` = '{sweep_id}'",
            order_by=["attributes.start_time ASC"],
            max_results=10_000,
        )
    return [r for r in runs if r.data.tags.get(KIND_TAG) != "report"]


def latest_sweep_id(client, experiment_id: str) -> str | None:
    runs = client.search_runs(
        [experiment_id], f"tags.`{tracking.SWEEP_TAG}` LIKE '%'", max_results=1, order_by=["attributes.start_time DESC"]
    )
    return runs[0].data.tags[tracking.SWEEP_TAG] if runs else None


def run_history(
    client, run_id: str, keys=("train_loss", "train_acc", "test_loss", "test_acc", "lr", "images_per_sec")
) -> list[dict]:
    """Per-epoch metrics as the engine's history: ``[{"epoch": 1, "test_acc": ..., ...}, ...]``."""
    by_epoch: dict[int, dict] = {}
    for key in keys:
        for m in client.get_metric_history(run_id, key):
            by_epoch.setdefault(m.step, {"epoch": m.step})[key] = m.value
    return [by_epoch[e] for e in sorted(by_epoch)]


def _label(run, taken: set) -> str:
    label = run.info.run_name or run.info.run_id[:8]
    if label in taken:
        label = f"{label} [{run.info.run_id[:8]}]"
    taken.add(label)
    return label + ("" if run.info.status == "FINISHED" else f" ({run.info.status})")


def table_row(run, history: list[dict]) -> dict:
    """One run's row. Values come from MLflow as they are: run-level metrics, the last epoch's lr,
    the mean of the per-epoch images/s, the run's start-to-end time."""
    metrics, tags, info = run.data.metrics, run.data.tags, run.info
    wall = (info.end_time - info.start_time) / 1000 if info.end_time and info.start_time else None
    speeds = [h["images_per_sec"] for h in history if "images_per_sec" in h]
    lrs = [h["lr"] for h in history if "lr" in h]
    epochs_to_target = metrics.get("epochs_to_target")
    best_epoch = metrics.get("best_epoch")
    return {
        "run": info.run_name or "",
        "overrides": tags.get("sweeplab.overrides", ""),
        "status": info.status,
        "best_test_acc": metrics.get("best_test_acc"),
        "best_epoch": int(best_epoch) if best_epoch is not None else None,
        "epochs_to_target": int(epochs_to_target) if epochs_to_target is not None else None,
        "train_time_to_target": metrics.get("train_time_to_target"),
        "target_acc": float(run.data.params["target_acc"]) if "target_acc" in run.data.params else None,
        "final_lr": lrs[-1] if lrs else None,
        "wall_time_s": wall,
        "images_per_sec": sum(speeds) / len(speeds) if speeds else None,
        "run_id": info.run_id,
        "failure": tags.get(tracking.FAILURE_TAG, ""),
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
    per_run = [
        [o for o in r["overrides"].split() if not o.lstrip("+~").startswith(ENVIRONMENT_KEYS) and o != "(defaults)"]
        for r in rows
    ]
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


def comparison_figure(histories: dict[str, list[dict]], sweep_id: str):
    """The seed's 2x2 figure (test acc, test loss, train acc, train loss), one line per run."""
    from sweeplab import plots

    fig = plots.curves_figure(histories, title=f"sweep {sweep_id}")
    for ax in fig.axes:
        ax.xaxis.get_major_locator().set_params(integer=True)  # epochs
    return fig


def compare_link(experiment_id: str, rows: list[dict]) -> str:
    """The MLflow UI page that compares these runs (parameter table, parallel coordinates over lr)."""
    ids = ",".join(f'"{r["run_id"]}"' for r in rows)
    return f'#/compare-runs?runs=[{ids}]&experiments=["{experiment_id}"]'


def build_report(
    experiment_id: str, sweep_id: str, out_dir: Path | None = None, log_to_mlflow: bool = True, client=None
) -> Report:
    """Compare the runs of sweep ``sweep_id``: save figure and tables in ``out_dir`` (a temporary
    folder when None: then only MLflow keeps them) and log them to the sweep's report run."""
    from mlflow.tracking import MlflowClient

    from sweeplab import plots

    client = client or MlflowClient()
    runs = job_runs(experiment_id, sweep_id, client)
    if not runs:
        raise ConfigError(f"no runs of sweep {sweep_id} in experiment {experiment_id} of {client.tracking_uri}")
    taken: set = set()
    rows, histories = [], {}
    for run in runs:
        history = run_history(client, run.info.run_id)
        histories[_label(run, taken)] = history
        rows.append(table_row(run, history))

    keep = out_dir is not None
    out = Path(out_dir) if keep else Path(tempfile.mkdtemp(prefix="sweeplab-report-"))
    out.mkdir(parents=True, exist_ok=True)
    report = Report(sweep_id, rows, histories, out)
    report.files = {"figure": out / FIGURE, "markdown": out / TABLE_MD, "csv": out / TABLE_CSV}
    report.figure = comparison_figure(histories, sweep_id)
    plots.save(report.figure, report.files["figure"])
    markdown = to_markdown(rows, sweep_id, experiment_id)
    report.files["markdown"].write_text(markdown)
    report.files["csv"].write_text(to_csv(rows))
    if log_to_mlflow:
        report.run_id = log_report(client, experiment_id, report, markdown, out if keep else None)
    if not keep:
        for path in report.files.values():
            path.unlink()
        out.rmdir()
    return report


def find_report_run(client, experiment_id: str, sweep_id: str):
    runs = client.search_runs(
        [experiment_id],
        f"tags.`{REPORT_FOR_TAG}` = '{sweep_id}'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return runs[0] if runs else None


def log_report(client, experiment_id: str, report: Report, markdown: str, out_dir: Path | None) -> str:
    """Log the files to the sweep's report run (reused when the report is made again). The table
    is also the run's description, so the MLflow UI shows it on the run's overview page."""
    existing = find_report_run(client, experiment_id, report.sweep_id)
    if existing is not None:
        run_id = existing.info.run_id
    else:
        run_id = client.create_run(
            experiment_id,
            run_name=f"report {report.sweep_id}",
            tags={KIND_TAG: "report", REPORT_FOR_TAG: report.sweep_id, "mlflow.source.name": "sweeplab.report"},
        ).info.run_id
    tags = {
        "mlflow.note.content": markdown[:60000],
        "sweeplab.report.runs": str(len(report.rows)),
        "sweeplab.report.failed": str(len(report.failed)),
    }
    if out_dir is not None:
        tags[REPORT_DIR_TAG] = str(out_dir.resolve())
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    for path in report.files.values():
        client.log_artifact(run_id, str(path), ARTIFACT_DIR)
    client.set_terminated(run_id, "FINISHED")
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
        print(f"report: MLflow run {report.run_id} (artifacts under {ARTIFACT_DIR}/)", file=stream, flush=True)


# -- the Hydra callback -------------------------------------------------------------------------
class SweepCallback(Callback):
    """Set in conf/hydra/default.yaml. Environment variables reach every launcher's workers."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        try:  # before any job starts: every job's config, and the store they will all log to
            validate_jobs(config, parsed)
            tracking.check_reachable(tracking.store_uri(config.tracking))
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        os.environ.setdefault(SWEEP_ENV, new_sweep_id())
        os.environ[SWEPT_ENV] = ",".join(o.get_key_element() for o in parsed if o.is_sweep_override())
        log.info(f"sweep {os.environ[SWEEP_ENV]}: MLflow runs tagged {tracking.SWEEP_TAG}={os.environ[SWEEP_ENV]}")

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_id = os.environ.get(SWEEP_ENV)
        if not sweep_id:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        # Jobs that failed before their MLflow run existed leave only this file in their folder.
        failed_jobs = sorted(p.parent.name for p in sweep_dir.glob(f"*/{FAILED_MARKER}"))
        try:
            experiment_id = tracking.setup(config.tracking)
            runs = job_runs(experiment_id, sweep_id)
        except ConfigError as err:
            print(f"error: sweep {sweep_id}: {err}", file=sys.stderr)
            sys.exit(1)
        if runs:
            try:  # the report is a bonus: a broken one must not hide the sweep's own outcome
                announce(build_report(experiment_id, sweep_id, sweep_dir / "report"))
            except Exception as err:
                log.error(f"sweep {sweep_id}: could not write the report: {type(err).__name__}: {err}")
        failed = [f"{r.info.run_name} ({r.info.status})" for r in runs if r.info.status != "FINISHED"]
        log.info(f"sweep {sweep_id}: {len(runs) - len(failed)} of {len(runs)} runs FINISHED")
        if failed or failed_jobs:
            jobs = f"; failed jobs (see their folders in {sweep_dir}): {', '.join(failed_jobs)}" if failed_jobs else ""
            print(
                f"error: sweep {sweep_id} did not finish: {', '.join(failed) or 'no run FAILED in MLflow'}{jobs}",
                file=sys.stderr,
            )
            sys.exit(1)


# -- on demand ----------------------------------------------------------------------------------
USAGE = """usage: python -m sweeplab.report [sweep=<id>|latest] [out=<dir>] [no_mlflow=true] [<config overrides>...]

Writes the comparison report of one sweep (default: the latest) of the MLflow store that train.py
uses: comparison.png, comparison.md, comparison.csv, and logs them to the sweep's report run.
  sweep=<id>       the sweep id (MLflow tag sweeplab.sweep), or latest (default)
  out=<dir>        where to write the files (default: where the sweep's report was written last,
                   else outputs/reports/<sweep id>)
  no_mlflow=true   only write the files, log nothing to MLflow
  tracking.store_dir=... tracking.uri=... tracking.experiment=...   which store and experiment,
                   as for train.py (any other override of conf/ is accepted and ignored)
"""


def compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import sweeplab  # noqa: F401  (registers the config resolvers)
    from sweeplab.settings import repo_root

    with initialize_config_dir(str(repo_root() / "conf"), version_base="1.3", job_name="report"):
        return hydra_compose("train", overrides=overrides)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    own = {"sweep": "latest", "out": None, "no_mlflow": "false"}
    overrides = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if key in own and eq:
            own[key] = value
        elif eq:
            overrides.append(arg)
        else:
            print(f"error: {arg!r} is not key=value\n{USAGE}", file=sys.stderr)
            return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from mlflow.tracking import MlflowClient

    try:
        cfg = compose(overrides)
        uri = tracking.store_uri(cfg.tracking)
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(cfg.tracking.experiment)
        if exp is None:
            raise ConfigError(f"no experiment {cfg.tracking.experiment!r} in the MLflow store {uri}")
        sweep_id = own["sweep"]
        if sweep_id == "latest":
            sweep_id = latest_sweep_id(client, exp.experiment_id)
            if sweep_id is None:
                raise ConfigError(
                    f"no sweeps in experiment {cfg.tracking.experiment!r} of {uri}; run one with python train.py -m ..."
                )
        out = own["out"]
        if out is None:
            previous = find_report_run(client, exp.experiment_id, sweep_id)
            out = previous and previous.data.tags.get(REPORT_DIR_TAG)
            if not out or not Path(out).parent.is_dir():
                out = Path(cfg.paths.log_dir) / "reports" / sweep_id
        report = build_report(
            exp.experiment_id,
            sweep_id,
            Path(out),
            log_to_mlflow=own["no_mlflow"].lower() not in ("true", "1", "yes"),
            client=client,
        )
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    announce(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
