"""Seeds in a sweep: configurations compared by mean and spread, a verdict on seed noise, and the
sweep's best as a configuration. First the pure pieces (the one best-run choice over Run records,
the verdict's statistics, the seeds shorthand), then a 2 x 2 sweep (two learning rates, ``seeds=2``)
through the real entry point."""

from __future__ import annotations

import csv
import dataclasses
import math
import statistics

import pytest
from omegaconf import OmegaConf
from scipy import stats

from sweeplab import job, report, tracking
from sweeplab.report.noise import verdict
from sweeplab.tracking import Run, choose_best, configurations

from apps import run_app
from support import TINY, mlflow_client
from sweeps import seeded_sweep

ACC = "best_test_acc"


# -- the one best-run choice, over records made here ---------------------------------------------
def record(name: str, value: float | None, configuration: str | None = None, start: int = 0, **kw) -> Run:
    tags = {tracking.SWEEP_TAG: kw.pop("sweep", "s1"), **kw.pop("tags", {})}
    if configuration is not None:
        tags[tracking.CONFIGURATION_TAG] = configuration
    metrics = {} if value is None else {ACC: value}
    return Run(name, name, "1", kw.pop("status", "FINISHED"), start, start + 1, {}, metrics, tags)


def seeded(values: dict[str, list[float]]) -> list[Run]:
    """One run per value, named ``<configuration> trainer.seed=<i>``, each configuration's seeds in turn."""
    runs = []
    for configuration, seeds in values.items():
        for i, v in enumerate(seeds, start=1):
            runs.append(record(f"{configuration} trainer.seed={i}", v, configuration, start=len(runs)))
    return runs


def test_the_best_is_the_best_configuration_by_mean_never_a_lucky_seed():
    runs = seeded({"lr=0.1": [0.40, 0.41, 0.42], "lr=0.2": [0.30, 0.33, 0.45]})
    luckiest = max(runs, key=lambda r: r.metrics[ACC])
    assert luckiest.name == "lr=0.2 trainer.seed=3"  # the single best run belongs to the worse mean
    best = choose_best(runs, ACC, "max")
    assert best.name == "lr=0.1" and best.n == 3
    assert best.mean == pytest.approx(0.41) and best.std == pytest.approx(0.01)
    assert best.best_run.name == "lr=0.1 trainer.seed=3"  # its own best seed is what a sweep registers
    assert [c.name for c in configurations(runs, ACC, "max")] == ["lr=0.1", "lr=0.2"]
    # For a metric to minimise the order turns round.
    assert [c.name for c in configurations(runs, ACC, "min")] == ["lr=0.2", "lr=0.1"]
    assert choose_best(runs, ACC, "min").best_run.name == "lr=0.2 trainer.seed=1"


def test_without_seeds_the_best_is_the_best_run_and_ties_go_to_the_newest():
    runs = [record("a", 0.3, "a", start=1), record("b", 0.5, "b", start=2), record("c", 0.5, "c", start=3)]
    best = choose_best(runs, ACC, "max")
    assert best.n == 1 and best.std is None and best.best_run.name == "c"
    assert choose_best(runs, ACC, "min").best_run.name == "a"


def test_runs_that_cannot_be_the_best_are_left_out():
    runs = [
        record("ok", 0.3, "x"),
        record("failed", 0.9, "y", status="FAILED"),
        record("killed", 0.9, "y", status="KILLED"),
        record("parent", 0.9, "z", tags={tracking.KIND_TAG: "sweep"}),
        record("nan", math.nan, "w"),
        record("none", None, "v"),
    ]
    assert [c.name for c in configurations(runs, ACC)] == ["x"]
    assert choose_best([r for r in runs if r.name != "ok"], ACC) is None


def test_configurations_are_named_within_their_sweep():
    """The same swept value in two sweeps (say, of different lengths) is two configurations; runs
    from before the tag are grouped by their name without the seed; runs of no sweep stand alone."""
    runs = [
        record("lr=0.1 trainer.seed=1", 0.5, "lr=0.1", sweep="s1"),
        record("lr=0.1 trainer.seed=1", 0.7, "lr=0.1", sweep="s2"),
        record("lr=0.1 trainer.seed=2", 0.6, "lr=0.1", sweep="s2"),
        record("old trainer.seed=1", 0.1, sweep="s3"),
        record("old trainer.seed=2", 0.2, sweep="s3"),
        record("alone", 0.2, "alone", sweep=None),
        record("alone", 0.2, "alone", sweep=None),
    ]
    runs = [dataclasses.replace(r, run_id=f"id{i}") for i, r in enumerate(runs)]
    found = sorted((c.name, c.n) for c in configurations(runs, ACC))
    assert found == [("alone", 1), ("alone", 1), ("lr=0.1", 1), ("lr=0.1", 2), ("old", 2)]


# -- the verdict ------------------------------------------------------------------------------------
def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """Welch's test written out: the standard error of the difference of means, and the two-sided p
    from Student's t with the Welch-Satterthwaite degrees of freedom."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return se, 2 * stats.t.sf(abs(statistics.fmean(a) - statistics.fmean(b)) / se, df)


def test_a_clear_difference_is_called_one_with_welchs_test():
    a, b = [0.50, 0.51, 0.52, 0.50], [0.40, 0.43, 0.41]  # unequal sizes and variances: Welch, not Student
    said = verdict(configurations(seeded({"lr=0.1": a, "lr=0.2": b}), ACC, "max"))
    se, p = welch(a, b)
    assert said.p_value == pytest.approx(p, rel=1e-9) and said.p_value < 0.05
    assert said.difference == pytest.approx(statistics.fmean(a) - statistics.fmean(b))
    assert said.standard_error == pytest.approx(se)
    assert said.text.startswith(f"lr=0.1 vs lr=0.2: +{100 * said.difference:.2f} ± {100 * se:.2f} points")
    assert "a difference beyond seed noise" in said.text and "Welch's t-test" in said.text
    assert "4 vs 3 seeds" in said.text


def test_the_issues_cpu_sweep_is_not_distinguishable_from_seed_noise():
    """The six jobs of issue 27: 1e-2 at 41.30 / 36.20 / 35.00%, 9.33e-3 at 40.30 / 43.15 / 32.80%."""
    runs = seeded({"optimizer.lr=0.01": [0.4130, 0.3620, 0.3500], "optimizer.lr=0.00933": [0.4030, 0.4315, 0.3280]})
    ranked = configurations(runs, ACC, "max")
    assert ranked[0].name == "optimizer.lr=0.00933"  # by mean, 38.75% against 37.50%
    said = verdict(ranked)
    assert said.text.startswith("optimizer.lr=0.00933 vs optimizer.lr=0.01: +1.25 ± ")
    assert "not distinguishable from seed noise (Welch's t-test: p = " in said.text
    assert said.text.endswith(", 3 seeds each).") and said.p_value > 0.5


def test_with_one_seed_the_verdict_says_none_is_possible_and_how_to_get_one():
    said = verdict(configurations(seeded({"lr=0.1": [0.9292], "lr=0.2": [0.9287]}), ACC, "max"))
    assert said.text.startswith("No verdict possible: lr=0.1 vs lr=0.2: +0.05 points")
    assert "one run each" in said.text and "seeds=3" in said.text and said.p_value is None
    one = verdict(configurations(seeded({"lr=0.1": [0.5, 0.6]}), ACC, "max")).text
    assert one.startswith("One configuration (lr=0.1)") and "55.00 ± 7.07%" in one
    assert verdict([]).text.startswith("No verdict")


def test_the_configurations_table_spreads_the_target_over_the_seeds_that_reached_it():
    runs = seeded({"lr=0.1": [0.90, 0.89, 0.80], "lr=0.2": [0.70, 0.71]})
    to_target = {0: (5, 50.0), 1: (7, 71.0)}  # lr=0.1: two of its three seeds reached the target
    rows = []
    for i, run in enumerate(runs):
        epochs, seconds = to_target.get(i, (None, None))
        row = dict.fromkeys(report.COLUMNS)
        row |= {"run": run.name, "overrides": run.name, "run_id": run.run_id, "status": "FINISHED"}
        row |= {"best_test_acc": run.metrics[ACC]}
        row |= {"configuration": run.tags[tracking.CONFIGURATION_TAG], "final_test_loss": 1.0 + i / 10}
        row |= {"epochs_to_target": epochs, "train_time_to_target": seconds, "target_acc": 0.88}
        rows.append(row)
    rows.append({**rows[-1], "run": "lr=0.2 trainer.seed=3", "run_id": "x", "status": "FAILED"})
    ranked = configurations(runs, ACC, "max")
    table = report.configuration_rows(rows, ranked, ACC)
    assert [(c["configuration"], c["runs"], c["finished"], c["reached_target"]) for c in table] == [
        ("lr=0.1", 3, 3, 2),
        ("lr=0.2", 3, 2, 0),
    ]
    assert table[0]["epochs_to_target_mean"] == 6 and table[0]["epochs_to_target_std"] == pytest.approx(math.sqrt(2))
    assert table[0]["train_time_to_target_mean"] == 60.5
    assert table[1]["final_test_loss_mean"] == pytest.approx(1.35) and table[1]["best_run"] == "lr=0.2 trainer.seed=2"
    markdown = report.to_markdown(rows, "s1", None, ranked, ACC)
    assert "| `lr=0.1` | 3 | 86.33 ± 5.51% | 6.0 ± 1.4 (2 of 3) | 60.5 ± 14.8 s (2 of 3) | 1.100 ± 0.100 |" in markdown
    assert "| `lr=0.2` | 2 (+1 failed) | 70.50 ± 0.71% | not reached | not reached | 1.350 ± 0.071 |" in markdown
    assert "Best configuration: **lr=0.1** with 86.33 ± 5.51% test accuracy over 3 seeds" in markdown


# -- the shorthand ------------------------------------------------------------------------------------
def test_seeds_is_the_grid_sweepers_range_of_seeds(monkeypatch):
    assert job.seed_overrides(3) == ["trainer.seed=range(1,4)"] and job.seed_overrides(None) == []
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            job.seed_overrides(bad)
    monkeypatch.setattr(job, "swept_keys", lambda: ["trainer.seed", "optimizer.lr"])
    overrides = ["trainer.seed=2", "optimizer.lr=0.01", "seeds=3", "trainer.epochs=3"]
    assert job.run_name(overrides) == "optimizer.lr=0.01 trainer.seed=2"  # the seed last
    assert job.configuration(overrides) == "optimizer.lr=0.01"
    monkeypatch.setattr(job, "swept_keys", lambda: ["trainer.seed"])  # only seeds: the rest is the configuration
    assert job.configuration(overrides) == "optimizer.lr=0.01 trainer.epochs=3"


def test_help_shows_the_shorthand():
    result = run_app("train.py", "--help")
    assert result.returncode == 0 and "-m optimizer.lr=1e-2,9.33e-3 seeds=3" in result.stdout


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["seeds=3"], "seeds=3 runs each configuration of a sweep with 3 seeds: add -m"),
        (["-m", "seeds=2", "trainer.seed=1,2"], "seeds=2 and trainer.seed=1,2 both choose the seeds"),
        (["-m", "seeds=0"], "seeds=0 must be an integer >= 1"),
        (
            ["-m", "hparams_search=optuna_lr", "seeds=2"],
            "a search (hydra.sweeper.params, or a range on the command line)",
        ),
    ],
)
def test_a_wrong_seeds_is_one_line_and_creates_no_run(workdir, overrides, message):
    result = run_app("train.py", *overrides, *TINY, *workdir["overrides"])
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and message in lines[-1], lines[-3:]
    client = mlflow_client(workdir["store"])
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


# -- a 2 x 2 sweep end to end ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def sweep(tiny_npz):
    s = seeded_sweep(tiny_npz)
    assert s["result"].returncode == 0, s["result"].stderr[-3000:]
    runs = s["client"].search_runs([s["experiment"].experiment_id], order_by=["attributes.start_time ASC"])
    (parent,) = [r for r in runs if r.data.tags.get("sweeplab.kind") == "sweep"]
    (sweep_dir,) = s["sweep_dirs"]
    return {**s, "parent": parent, "children": [r for r in runs if r is not parent], "dir": sweep_dir / "report"}


def by_configuration(children) -> dict[str, list]:
    groups: dict[str, list] = {}
    for run in children:
        groups.setdefault(run.data.tags["sweeplab.configuration"], []).append(run)
    return groups


@pytest.mark.slow
def test_every_job_is_a_seed_of_its_configuration(sweep):
    parent, children = sweep["parent"], sweep["children"]
    assert parent.info.run_name == "sweep optimizer.lr=0.05,0.005 seeds=2" and parent.info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == [
        "optimizer.lr=0.005 trainer.seed=1",
        "optimizer.lr=0.005 trainer.seed=2",
        "optimizer.lr=0.05 trainer.seed=1",
        "optimizer.lr=0.05 trainer.seed=2",
    ]
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["sweeplab.configuration"] == f"optimizer.lr={run.data.params['optimizer.lr']}"
        assert run.data.tags["sweeplab.seed"] == run.data.params["trainer.seed"]
    # Each run's saved config reruns that one run (python train.py --config-dir ...), not a sweep of seeds.
    saved = OmegaConf.load(sweep["client"].download_artifacts(children[0].info.run_id, "config/config.yaml"))
    assert saved.seeds is None and str(saved.trainer.seed) == children[0].data.params["trainer.seed"]
    groups = by_configuration(children)
    assert {k: sorted(r.data.params["trainer.seed"] for r in v) for k, v in groups.items()} == {
        "optimizer.lr=0.05": ["1", "2"],
        "optimizer.lr=0.005": ["1", "2"],
    }


@pytest.mark.slow
def test_the_report_has_one_row_per_configuration_with_mean_and_spread(sweep):
    client, groups = sweep["client"], by_configuration(sweep["children"])
    with open(sweep["dir"] / "configurations.csv") as f:
        rows = {r["configuration"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(groups)
    markdown = (sweep["dir"] / "comparison.md").read_text()
    for name, runs in groups.items():
        row = rows[name]
        assert (row["runs"], row["finished"]) == ("2", "2")
        acc = [r.data.metrics[ACC] for r in runs]
        assert float(row["best_test_acc_mean"]) == pytest.approx(statistics.fmean(acc), rel=1e-12)
        assert float(row["best_test_acc_std"]) == pytest.approx(statistics.stdev(acc), rel=1e-12)
        final_loss = [client.get_metric_history(r.info.run_id, "test_loss")[-1].value for r in runs]
        assert float(row["final_test_loss_mean"]) == pytest.approx(statistics.fmean(final_loss), rel=1e-12)
        assert float(row["final_test_loss_std"]) == pytest.approx(statistics.stdev(final_loss), rel=1e-12)
        shown = f"| `{name}` | 2 | {100 * statistics.fmean(acc):.2f} ± {100 * statistics.stdev(acc):.2f}% |"
        assert shown in markdown, markdown
    assert "## Configurations: mean ± standard deviation over seeds" in markdown
    # The best mean first, as the sweep chose.
    assert next(iter(rows)) == sweep["parent"].data.tags["sweeplab.sweep.best_configuration"]


@pytest.mark.slow
def test_the_verdict_names_its_test_on_the_parent_and_in_the_report(sweep):
    parent, groups = sweep["parent"], by_configuration(sweep["children"])
    text = parent.data.tags["sweeplab.sweep.verdict"]
    assert "Welch's t-test: p = " in text and text.endswith("2 seeds each).")
    assert f"**Verdict:** {text}" in (sweep["dir"] / "comparison.md").read_text()
    assert f"**Verdict:** {text}" in sweep["result"].stdout  # printed at the end of the sweep
    best = parent.data.tags["sweeplab.sweep.best_configuration"]
    (other,) = set(groups) - {best}
    assert text.startswith(f"{best} vs {other}: ")
    values = {k: [r.data.metrics[ACC] for r in v] for k, v in groups.items()}
    _, p = welch(values[best], values[other])
    assert parent.data.metrics["sweep.verdict_p_value"] == pytest.approx(p, rel=1e-9)


@pytest.mark.slow
def test_the_registered_model_is_the_best_run_of_the_best_mean_configuration(sweep):
    client, parent, groups = sweep["client"], sweep["parent"], by_configuration(sweep["children"])
    means = {k: statistics.fmean(r.data.metrics[ACC] for r in v) for k, v in groups.items()}
    best = max(means, key=means.get)
    assert means[best] != min(means.values())  # the two learning rates do differ here
    holder = max(groups[best], key=lambda r: r.data.metrics[ACC])
    tags = parent.data.tags
    assert tags["sweeplab.sweep.best_configuration"] == best
    assert tags["sweeplab.sweep.best_run"] == holder.info.run_id
    assert parent.data.metrics["sweep.best_mean"] == pytest.approx(means[best], rel=1e-12)
    assert parent.data.metrics["sweep.best_std"] == pytest.approx(
        statistics.stdev(r.data.metrics[ACC] for r in groups[best]), rel=1e-12
    )
    assert parent.data.metrics["sweep.best_value"] == holder.data.metrics[ACC]
    version = client.get_model_version("cifar10-resnet18", tags["sweeplab.registered_version"])
    assert version.run_id == holder.info.run_id
    assert version.tags["sweeplab.configuration"] == best
    assert version.tags["sweeplab.seed"] == holder.data.params["trainer.seed"]
    # explain.py's choice (and any search for the best run) is the same one.
    tracking.use_store(client.tracking_uri)
    sweep_id = parent.data.tags["sweeplab.sweep"]
    assert tracking.best_run(sweep["experiment"].experiment_id, ACC, "max", sweep_id).run_id == holder.info.run_id


@pytest.mark.slow
def test_the_figure_draws_each_configurations_mean_with_a_band(sweep):
    client, groups = sweep["client"], by_configuration(sweep["children"])
    tracking.use_store(client.tracking_uri)
    sweep_id = sweep["parent"].data.tags["sweeplab.sweep"]
    result = report.build_report(sweep["experiment"].experiment_id, sweep_id, log_to_mlflow=False)
    ax = result.figure.axes[0]  # test accuracy
    labels = [f"{c['configuration']} (2 runs)" for c in result.configurations]
    assert [line.get_label() for line in ax.get_lines()] == labels
    assert len(ax.collections) == 2  # one band each
    for line, band, row in zip(ax.get_lines(), ax.collections, result.configurations):
        histories = [
            sorted(client.get_metric_history(r.info.run_id, "test_acc"), key=lambda m: m.step)
            for r in groups[row["configuration"]]
        ]
        means = [100 * statistics.fmean(ms[i].value for ms in histories) for i in range(2)]
        stds = [100 * statistics.stdev(ms[i].value for ms in histories) for i in range(2)]
        assert list(line.get_ydata()) == pytest.approx(means)
        low, high = band.get_paths()[0].vertices[:, 1].min(), band.get_paths()[0].vertices[:, 1].max()
        assert low == pytest.approx(min(m - s for m, s in zip(means, stds)))
        assert high == pytest.approx(max(m + s for m, s in zip(means, stds)))
