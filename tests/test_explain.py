"""explain.py end to end: the best run of the latest sweep (sweeps.registry_sweeps' "better": 1 and 4
epochs, so its two runs differ clearly) explained by the real entry point, in-process; options and
every error through the same task function."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from matplotlib.image import imread

from sweeplab import errors, plots, tracking
from sweeplab.explain import FILES, ExplainError, cam_method, explain, resolve_layer
from sweeplab.models import resnet18
from sweeplab_model import Classifier

from apps import run_app
from support import ROOT
from sweeps import registry_sweeps

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(tiny_npz):
    """The two FINISHED runs of the store's latest sweep; 4 epochs learn the tiny data far better than 1."""
    s = registry_sweeps(tiny_npz)["better"]
    assert s["result"].returncode == 0, s["result"].stderr[-3000:]
    client, exp = s["client"], s["experiment"]
    parent = client.search_runs(
        [exp.experiment_id], "tags.`sweeplab.kind` = 'sweep'", max_results=1, order_by=["attributes.start_time DESC"]
    )[0]
    sweep_id = parent.data.tags["sweeplab.sweep"]
    runs = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    worse, best = sorted(runs, key=lambda r: r.data.metrics["best_test_acc"])
    assert best.data.metrics["best_test_acc"] > worse.data.metrics["best_test_acc"] + 0.05
    where = [f"tracking.store_dir={s['store']}", f"paths.log_dir={s['tmp'] / 'explain-outputs'}"]
    return {
        "tmp": s["tmp"],
        "store": s["store"],
        "where": where,
        "client": client,
        "best": best,
        "worse": worse,
        "experiment_id": exp.experiment_id,
        "sweep_id": sweep_id,
    }


@pytest.fixture(scope="module")
def explained(sweep, tmp_path_factory):
    """``python explain.py`` with its defaults: the best run of the latest sweep, a 5x5 grid."""
    out = tmp_path_factory.mktemp("explained")
    done = run_app("explain.py", *sweep["where"], f"output_dir={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture
def explain_cfg(sweep):
    """Run the explain task function in-process on the sweep's store (conftest isolates MLflow's URI)."""

    def make(*overrides, store=None):
        where = [f"tracking.store_dir={store or sweep['store']}", "tracking.uri=null", "device=cpu"]
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose("explain", overrides=[*where, *overrides])

    return make


def fails(cfg, capsys) -> str:
    """The one-line error of the task function, after checking it exits non-zero."""
    with pytest.raises(SystemExit) as exit_info:
        errors.run_task(explain, cfg)
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ")
    return err[-1]


def png_size(path) -> tuple[int, int]:
    height, width = imread(path).shape[:2]
    return width, height


def expected_size(rows: int, cols: int) -> tuple[int, int]:
    width, height = plots.grid_figsize(rows, cols)
    return round(width * 100), round(height * 100)


# -- the happy path -------------------------------------------------------------------------------
def test_explains_the_best_run_of_the_latest_sweep(sweep, explained):
    summary = json.loads((explained / FILES["summary"]).read_text())
    assert summary["run_id"] == sweep["best"].info.run_id
    assert summary["grid"] == [5, 5] and summary["explained"] == 25
    # The rebuilt model reproduces the accuracy the run logged for its best checkpoint.
    assert summary["test_acc"] == pytest.approx(sweep["best"].data.metrics["best_test_acc"], abs=1e-6)
    assert png_size(explained / FILES["grid"]) == expected_size(5, 5)
    assert png_size(explained / FILES["pairs"]) == expected_size(5, 10)  # image and heat map side by side
    assert (explained / FILES["confusion"]).stat().st_size > 10_000


def test_misclassified_images_in_test_order_with_real_heat_maps(explained):
    z = np.load(explained / FILES["cams"])
    wrong = np.flatnonzero(z["test_preds"] != z["test_labels"])
    np.testing.assert_array_equal(z["index"], wrong[:25])
    np.testing.assert_array_equal(z["pred"], z["test_preds"][z["index"]])
    assert (z["pred"] != z["label"]).all()
    np.testing.assert_array_equal(z["target"], z["pred"])  # the predicted class by default
    cams = z["cam"]
    assert cams.shape == (25, 32, 32) and cams.min() >= 0 and cams.max() <= 1
    spread = cams.reshape(25, -1).max(1) - cams.reshape(25, -1).min(1)
    assert (spread > 0.5).mean() >= 0.8, spread  # maps that point somewhere, not flat
    assert len({cam.argmax() for cam in cams}) > 1  # and not everywhere at the same place
    grid = imread(explained / FILES["grid"])
    assert grid[..., :3].std() > 0.1


def test_figures_are_logged_to_the_explained_run_only(sweep, explained):
    client = sweep["client"]
    logged = {a.path for a in client.list_artifacts(sweep["best"].info.run_id, "explain")}
    assert {f"explain/{name}" for name in FILES.values()} <= logged
    assert not client.list_artifacts(sweep["worse"].info.run_id, "explain")


def test_sweep_metric_direction_and_grid_options(sweep, explain_cfg, tmp_path):
    """sweep=<id> direction=min picks the worse run; a 2x3 grid of true-class GradCAM on layer3."""
    out = tmp_path / "out"
    explain(
        explain_cfg(
            f"sweep={sweep['sweep_id']}",
            "metric=best_test_acc",
            "direction=min",
            "num_images=6",
            "rows=2",
            "cols=3",
            "target=true",
            "method=gradcam",
            "target_layer=layer3",
            "log_artifacts=false",
            f"output_dir={out}",
        )
    )
    summary = json.loads((out / FILES["summary"]).read_text())
    assert summary["run_id"] == sweep["worse"].info.run_id
    assert summary["grid"] == [2, 3] and summary["explained"] == 6
    assert png_size(out / FILES["grid"]) == expected_size(2, 3)
    z = np.load(out / FILES["cams"])
    np.testing.assert_array_equal(z["target"], z["label"])
    assert not sweep["client"].list_artifacts(sweep["worse"].info.run_id, "explain")


def test_grid_figure_titles_and_axes():
    images = [np.full((32, 32, 3), i / 10, dtype=np.float32) for i in range(5)]
    titles = [f"Predicted: cat\nActual: dog {i}" for i in range(5)]
    fig = plots.image_grid_figure(images, titles, 2, 3)
    assert len(fig.axes) == 6
    assert [ax.get_title() for ax in fig.axes[:5]] == titles and fig.axes[5].get_title() == ""
    assert len(plots.image_heatmap_pairs_figure(images, [im[..., 0] for im in images], titles, 3).axes) == 12


def test_target_layer_names():
    model = resnet18(width=4)
    assert resolve_layer(model, "layer4") is model.layer4[-1]
    assert resolve_layer(model, "layer3") is model.layer3[-1]
    assert resolve_layer(model, "layer4[-1]") is model.layer4[1]
    assert resolve_layer(model, "layer2.0.conv1") is model.layer2[0].conv1
    with pytest.raises(ExplainError, match="layer1, layer2, layer3, layer4"):
        resolve_layer(model, "layer9")
    assert cam_method("gradcam++").__name__ == "GradCAMPlusPlus"
    assert cam_method("EigenCAM").__name__ == "EigenCAM"


# -- errors ------------------------------------------------------------------------------------------
def test_no_runs_from_the_entry_point(sweep, tmp_path):
    """An experiment with no runs (here: one the store lacks)."""
    done = run_app(
        "explain.py",
        f"tracking.store_dir={sweep['store']}",
        "tracking.experiment=nothing-here",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"output_dir={tmp_path / 'out'}",
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: no runs in experiment 'nothing-here'")
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_the_registered_best_model(sweep, explain_cfg, capsys, tmp_path):
    """model_uri=models:/<name>@best explains the run that holds the alias; an unknown alias is one line."""
    out = tmp_path / "registered"
    explain(
        explain_cfg(
            "model_uri=models:/cifar10-resnet18@best",
            "num_images=4",
            "cols=2",
            f"output_dir={out}",
            "log_artifacts=false",
        )
    )
    holder = sweep["client"].get_model_version_by_alias("cifar10-resnet18", "best").run_id
    assert json.loads((out / FILES["summary"]).read_text())["run_id"] == holder
    line = fails(explain_cfg("model_uri=models:/cifar10-resnet18@nope"), capsys)
    assert "models:/cifar10-resnet18@nope" in line and "alias nope not found" in line


def test_unknown_run_id_and_method(explain_cfg, capsys):
    assert "no run 0123456789abcdef" in fails(explain_cfg("run_id=0123456789abcdef"), capsys)
    assert "gradcam++" in fails(explain_cfg("method=nosuchcam"), capsys)


def test_unknown_layer(sweep, explain_cfg, capsys, tmp_path):
    line = fails(
        explain_cfg(f"run_id={sweep['best'].info.run_id}", "target_layer=layer9", f"output_dir={tmp_path}/out"), capsys
    )
    assert "target_layer='layer9'" in line and "layer4" in line
    assert not (tmp_path / "out").exists()


def _fake_run(sweep, name: str, model: bool, config: bool = True) -> str:
    """A FINISHED run in the sweep's experiment with (if ``config``) the best run's saved config and, if
    ``model``, a model of its own (untrained; its files are the test's to break)."""
    client = sweep["client"]
    tracking.use_store(client.tracking_uri)
    saved = client.download_artifacts(sweep["best"].info.run_id, "config/config.yaml")
    with tracking.open_run(sweep["experiment_id"], name) as run_id:
        if config:
            tracking.log_files([saved], "config")
        if model:
            net = Classifier(resnet18(width=4), [0.5] * 3, [0.25] * 3).eval()
            tracking.log_model(net, np.zeros((2, 3, 32, 32), dtype=np.uint8))
    return run_id


def test_run_without_model(sweep, explain_cfg, capsys):
    run_id = _fake_run(sweep, "no-model", model=False)
    assert f"run {run_id} (no-model) logged no model" in fails(explain_cfg(f"run_id={run_id}"), capsys)


def test_run_without_saved_config(sweep, explain_cfg, capsys):
    run_id = _fake_run(sweep, "no-config", model=True, config=False)
    assert f"run {run_id} has no saved config (config/config.yaml)" in fails(explain_cfg(f"run_id={run_id}"), capsys)


def test_corrupt_model(sweep, explain_cfg, capsys):
    run_id = _fake_run(sweep, "truncated", model=True)
    uri = tracking.model_uri(run_id)
    folder = sweep["client"].get_logged_model(uri.removeprefix("models:/")).artifact_location.removeprefix("file://")
    (weights,) = list(Path(folder).rglob("model.pth"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    line = fails(explain_cfg(f"run_id={run_id}"), capsys)
    assert line.startswith(f"error: cannot load the model {uri}: ")


def test_no_misclassified_images_writes_nothing(sweep, explained, explain_cfg, capsys, tmp_path, tiny_npz):
    """Point the best run at a copy of its data that holds only the test images it gets right."""
    z = np.load(explained / FILES["cams"])
    right = np.flatnonzero(z["test_preds"] == z["test_labels"])
    with np.load(tiny_npz) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["test_images"], arrays["test_labels"] = arrays["test_images"][right], arrays["test_labels"][right]
    np.savez(tmp_path / "easy.npz", **arrays)
    out = tmp_path / "out"
    line = fails(
        explain_cfg(f"run_id={sweep['best'].info.run_id}", f"data.npz={tmp_path / 'easy.npz'}", f"output_dir={out}"),
        capsys,
    )
    assert f"classifies all {len(right)} test images correctly" in line
    assert not out.exists()
