"""explain.py end to end: a tiny two-run sweep trained once per module, then the best run explained
by the real entry point (subprocess); options and every error through the same task function
in-process, so the module stays within its time budget (each subprocess pays ~5 s of imports)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from matplotlib.image import imread
from omegaconf import OmegaConf

from sweeplab import errors, plots
from sweeplab.explain import FILES, ExplainError, cam_method, explain, resolve_layer
from sweeplab.models import resnet18

from conftest import ROOT, TINY, mlflow_client, run_entry


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_npz):
    """Two FINISHED runs of one sweep; 4 epochs learn the tiny data far better than 1."""
    tmp = tmp_path_factory.mktemp("explain")
    store = tmp / "mlruns"
    where = [
        f"tracking.store_dir={store}",
        f"paths.log_dir={tmp / 'outputs'}",
        f"paths.checkpoint_dir={tmp / 'checkpoints'}",
    ]
    done = run_entry("train.py", "-m", "trainer.epochs=1,4", "optimizer.lr=0.05", *TINY, *where, f"data.npz={tiny_npz}")
    assert done.returncode == 0, done.stderr[-3000:]
    client = mlflow_client(store)
    runs = client.search_runs([client.get_experiment_by_name("cifar10").experiment_id])
    runs = [r for r in runs if "best_test_acc" in r.data.metrics]  # the training runs, not a sweep report
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    runs.sort(key=lambda r: r.data.metrics["best_test_acc"])
    worse, best = runs
    assert best.data.metrics["best_test_acc"] > worse.data.metrics["best_test_acc"] + 0.05
    return {
        "tmp": tmp,
        "store": store,
        "where": where,
        "client": client,
        "best": best,
        "worse": worse,
        "experiment_id": best.info.experiment_id,
        "sweep_id": best.data.tags["sweeplab.sweep"],
    }


@pytest.fixture(scope="module")
def explained(sweep):
    """``python explain.py`` with its defaults: the best run of the latest sweep, a 5x5 grid."""
    out = sweep["tmp"] / "explained"
    done = run_entry("explain.py", *sweep["where"], f"output_dir={out}")
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
    """An experiment with no runs (here: one the store lacks; a fresh store would add ~10 s of migrations)."""
    done = run_entry(
        "explain.py",
        f"tracking.store_dir={sweep['store']}",
        "tracking.experiment=nothing-here",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"output_dir={tmp_path / 'out'}",
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("error: no runs in experiment 'nothing-here'")
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_unknown_run_id_and_method(explain_cfg, capsys):
    assert "no run 0123456789abcdef" in fails(explain_cfg("run_id=0123456789abcdef"), capsys)
    assert "gradcam++" in fails(explain_cfg("method=nosuchcam"), capsys)


def test_unknown_layer(sweep, explain_cfg, capsys, tmp_path):
    line = fails(
        explain_cfg(f"run_id={sweep['best'].info.run_id}", "target_layer=layer9", f"output_dir={tmp_path}/out"), capsys
    )
    assert "target_layer='layer9'" in line and "layer4" in line
    assert not (tmp_path / "out").exists()


def _fake_run(sweep, tmp_path, name: str, config=None, checkpoint: bytes | None = None) -> str:
    """A FINISHED run in the sweep's experiment with the given config/checkpoint artifacts."""
    client = sweep["client"]
    run_id = client.create_run(sweep["experiment_id"], run_name=name).info.run_id
    folder = tmp_path / name
    folder.mkdir()
    if config is not None:
        OmegaConf.save(config, folder / "config.yaml")
        client.log_artifact(run_id, str(folder / "config.yaml"), "config")
    if checkpoint is not None:
        (folder / "best.pt").write_bytes(checkpoint)
        client.log_artifact(run_id, str(folder / "best.pt"), "checkpoints")
    client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.fixture
def best_artifacts(sweep, tmp_path):
    client, run_id = sweep["client"], sweep["best"].info.run_id
    config = OmegaConf.load(client.download_artifacts(run_id, "config/config.yaml", str(tmp_path)))
    checkpoint = open(client.download_artifacts(run_id, "checkpoints/best.pt", str(tmp_path)), "rb").read()
    return config, checkpoint


def test_run_without_checkpoint(sweep, explain_cfg, capsys, tmp_path, best_artifacts):
    run_id = _fake_run(sweep, tmp_path, "no-checkpoint", config=best_artifacts[0])
    assert f"run {run_id} (no-checkpoint) has no checkpoints/best.pt" in fails(explain_cfg(f"run_id={run_id}"), capsys)


def test_checkpoint_the_config_cannot_rebuild(sweep, explain_cfg, capsys, tmp_path, best_artifacts):
    config, checkpoint = best_artifacts
    config.model.width = 8  # the run's weights are width 4
    run_id = _fake_run(sweep, tmp_path, "other-width", config=config, checkpoint=checkpoint)
    line = fails(explain_cfg(f"run_id={run_id}"), capsys)
    assert "does not fit the model its config describes" in line and "size mismatch" in line


def test_corrupt_checkpoint(sweep, explain_cfg, capsys, tmp_path, best_artifacts):
    config, checkpoint = best_artifacts
    run_id = _fake_run(sweep, tmp_path, "truncated", config=config, checkpoint=checkpoint[: len(checkpoint) // 2])
    assert "is corrupt or truncated" in fails(explain_cfg(f"run_id={run_id}"), capsys)


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
    assert not out.exists() or not any(out.iterdir())
