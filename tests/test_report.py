"""The sweep report: written by the multirun callback to the sweep's parent run, and on demand."""

import csv
import statistics

import pytest
from hydra import compose, initialize_config_dir

from sweeplab import errors, report, tracking
from sweeplab.report.command import write_report

from apps import run_app
from support import ROOT
from sweeps import failed_sweep, two_run_sweep

pytestmark = pytest.mark.slow  # sweeps through the real entry point


@pytest.fixture(scope="module")
def sweep(tiny_npz):
    s = two_run_sweep(tiny_npz)
    assert s["result"].returncode == 0, s["result"].stderr[-3000:]
    return s


@pytest.fixture(scope="module")
def failed(tiny_npz):
    return failed_sweep(tiny_npz)


def all_runs(s):
    return s["client"].search_runs([s["experiment"].experiment_id], order_by=["attributes.start_time ASC"])


def job_runs(s):
    return [r for r in all_runs(s) if r.data.tags.get("sweeplab.kind") != "sweep"]


def parent_of(s):
    (parent,) = [r for r in all_runs(s) if r.data.tags.get("sweeplab.kind") == "sweep"]
    return parent


def read_csv(s):
    (sweep_dir,) = s["sweep_dirs"]
    with open(sweep_dir / "report" / "comparison.csv") as f:
        return list(csv.DictReader(f))


def test_multirun_writes_the_report_into_its_sweep_folder(sweep):
    (sweep_dir,) = sweep["sweep_dirs"]
    files = {p.name for p in (sweep_dir / "report").iterdir()}
    assert files == {"comparison.png", "comparison.md", "comparison.csv"}
    assert (sweep_dir / "report" / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| optimizer.lr=0.05 |" in sweep["result"].stdout  # the table is printed too


def test_figure_has_four_axes_with_one_line_per_run(sweep):
    sweep_id = job_runs(sweep)[0].data.tags["sweeplab.sweep"]
    tracking.use_store(sweep["client"].tracking_uri)
    result = report.build_report(sweep["experiment"].experiment_id, sweep_id, log_to_mlflow=False)
    axes = result.figure.axes
    assert [ax.get_title() for ax in axes] == ["Test accuracy", "Test loss", "Train accuracy", "Train loss"]
    for ax in axes:
        assert len(ax.get_lines()) == 2
        assert [list(line.get_xdata()) for line in ax.get_lines()] == [[1, 2], [1, 2]]
    legend = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert legend == ["optimizer.lr=0.05", "optimizer.lr=0.02"]
    # The plotted test accuracy is MLflow's history, in percent.
    client, runs = sweep["client"], job_runs(sweep)
    for line, run in zip(axes[0].get_lines(), runs):
        history = client.get_metric_history(run.info.run_id, "test_acc")
        assert list(line.get_ydata()) == [100 * m.value for m in sorted(history, key=lambda m: m.step)]


def test_table_rows_match_the_runs_mlflow_metrics(sweep):
    client, runs, rows = sweep["client"], job_runs(sweep), read_csv(sweep)
    assert [r["run_id"] for r in rows] == [r.info.run_id for r in runs]
    for row, run in zip(rows, runs):
        m, history = (
            run.data.metrics,
            {
                k: sorted(client.get_metric_history(run.info.run_id, k), key=lambda x: x.step)
                for k in ("lr", "images_per_sec")
            },
        )
        assert row["run"] == run.info.run_name
        assert row["overrides"] == run.data.tags["sweeplab.overrides"]
        assert row["status"] == "FINISHED" and row["failure"] == ""
        assert row["configuration"] == run.data.tags["sweeplab.configuration"] == run.info.run_name  # no seeds
        assert row["seed"] == run.data.params["trainer.seed"] == "1"
        losses = sorted(client.get_metric_history(run.info.run_id, "test_loss"), key=lambda x: x.step)
        assert float(row["final_test_loss"]) == losses[-1].value
        assert float(row["best_test_acc"]) == m["best_test_acc"]
        assert int(row["best_epoch"]) == m["best_epoch"]
        assert row["epochs_to_target"] == ("" if "epochs_to_target" not in m else str(int(m["epochs_to_target"])))
        assert row["train_time_to_target"] == ("" if "epochs_to_target" not in m else str(m["train_time_to_target"]))
        assert float(row["target_acc"]) == 0.88
        assert float(row["final_lr"]) == history["lr"][-1].value == float(run.data.params["optimizer.lr"])
        assert float(row["wall_time_s"]) == (run.info.end_time - run.info.start_time) / 1000
        assert float(row["images_per_sec"]) == pytest.approx(
            statistics.fmean(x.value for x in history["images_per_sec"]), rel=1e-12
        )
    (sweep_dir,) = sweep["sweep_dirs"]
    markdown = (sweep_dir / "report" / "comparison.md").read_text()
    for run in runs:
        pct = f"{100 * run.data.metrics['best_test_acc']:.2f}%"
        line = next(x for x in markdown.splitlines() if x.startswith(f"| {run.info.run_name} |"))
        assert f"| FINISHED | {pct} | {int(run.data.metrics['best_epoch'])} |" in line


def test_the_report_is_logged_to_the_sweeps_parent_run(sweep):
    client, parent = sweep["client"], parent_of(sweep)
    assert parent.data.tags["sweeplab.sweep"] == job_runs(sweep)[0].data.tags["sweeplab.sweep"]
    paths = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert paths == {"report/comparison.png", "report/comparison.md", "report/comparison.csv"}
    assert "| optimizer.lr=0.02 |" in parent.data.tags["mlflow.note.content"]  # its description in the UI
    assert len(all_runs(sweep)) == 3  # the parent and its two jobs: no separate report run


def test_with_one_seed_the_verdict_says_none_is_possible(sweep):
    """Two learning rates, one seed each: the report and the parent say so and how to get a verdict;
    the report stays one table of runs and the figure one line per run (test_figure_...)."""
    (sweep_dir,) = sweep["sweep_dirs"]
    markdown = (sweep_dir / "report" / "comparison.md").read_text()
    (line,) = [x for x in markdown.splitlines() if x.startswith("**Verdict:**")]
    assert line.startswith("**Verdict:** No verdict possible: optimizer.lr=") and "one run each" in line
    assert "seeds=3" in line and "Configurations" not in markdown
    assert not (sweep_dir / "report" / "configurations.csv").exists()
    parent = parent_of(sweep)
    assert parent.data.tags["sweeplab.sweep.verdict"] == line.removeprefix("**Verdict:** ")
    assert "sweep.best_mean" not in parent.data.metrics and "sweep.verdict_p_value" not in parent.data.metrics


def report_cfg(*overrides):
    """The report command's config as ``python -m sweeplab.report <overrides>`` composes it."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("report", overrides=["tracking.uri=null", *overrides])


def test_on_demand_report_logs_to_the_same_parent(sweep, tmp_path, capsys):
    out = tmp_path / "again"
    write_report(report_cfg("sweep=latest", f"tracking.store_dir={sweep['store']}", f"out={out}"))
    assert "| optimizer.lr=0.05 |" in capsys.readouterr().out
    with open(out / "comparison.csv") as f:
        again = list(csv.DictReader(f))
    assert [{k: v for k, v in r.items()} for r in again] == read_csv(sweep)
    assert len(all_runs(sweep)) == 3
    assert parent_of(sweep).data.tags["sweeplab.report_dir"] == str(out.resolve())


def test_on_demand_report_of_an_unknown_sweep_is_one_line(sweep, capsys):
    cfg = report_cfg("sweep=nope", f"tracking.store_dir={sweep['store']}", "log_to_mlflow=false")
    with pytest.raises(SystemExit) as exit_info:
        errors.run_task(write_report, cfg)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no runs of sweep nope")


def test_a_sweep_with_a_failed_run_still_reports(failed):
    result = failed["result"]
    assert result.returncode == 1, result.stderr[-3000:]  # the failure still sets the exit code
    runs = {float(r.data.params["optimizer.lr"]): r for r in job_runs(failed)}
    assert list(runs) == [1e6, 0.05]  # the job after the failed one ran: the sweep went on
    bad = runs[1e6].info.run_name  # Hydra spells the value its own way (1000000.0)
    assert f"did not finish: {bad} (FAILED)" in result.stderr
    rows = {r["run"]: r for r in read_csv(failed)}
    assert rows["optimizer.lr=0.05"]["status"] == "FINISHED"
    row = rows[bad]
    assert row["status"] == "FAILED" and "NonFiniteLossError" in row["failure"]
    assert row["failure"] == runs[1e6].data.tags["sweeplab.failure"]
    assert row["best_test_acc"] == "" and row["final_lr"] == ""  # it never finished an epoch
    (sweep_dir,) = failed["sweep_dirs"]
    markdown = (sweep_dir / "report" / "comparison.md").read_text()
    assert f"| {bad} | `{bad}` | **FAILED** |" in markdown
    assert "Best: **optimizer.lr=0.05**" in markdown
    # The parent: FAILED, naming the failed job; the finished one, the best, is registered.
    parent = parent_of(failed)
    assert parent.info.status == "FAILED" and bad in parent.data.tags["sweeplab.failure"]
    assert (parent.data.metrics["sweep.jobs_finished"], parent.data.metrics["sweep.jobs_failed"]) == (1, 1)
    good = runs[0.05].info.run_id
    assert parent.data.tags["sweeplab.sweep.best_run"] == good
    version = failed["client"].get_model_version_by_alias("cifar10-resnet18", "best")
    assert version.run_id == good and parent.data.tags["sweeplab.registered_version"] == str(version.version)


def test_report_command_is_a_hydra_app():
    """``python -m sweeplab.report`` has --help and --cfg job like the other entry points."""
    help_text = run_app("-m sweeplab.report", "--help")
    assert help_text.returncode == 0 and "report: the comparison of one sweep" in help_text.stdout
    job = run_app("-m sweeplab.report", "--cfg", "job", "sweep=20260101-000000-abcdef", "out=/tmp/reports")
    assert job.returncode == 0, job.stderr[-2000:]
    assert "sweep: 20260101-000000-abcdef" in job.stdout and "log_to_mlflow: true" in job.stdout
