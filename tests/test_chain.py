"""The whole chain on a user's own images (an image folder the test builds): find_lr.py -> the sweep
it prints -> the report on the sweep's parent -> the registered model predicting -> explain.py with
the folder's class names -> a rerun from the saved config. In-process through the real entry points."""

from __future__ import annotations

import json
import shlex

import mlflow
import numpy as np
import pytest
from omegaconf import OmegaConf

from sweeplab import tracking
from sweeplab.explain import load_test_set

from apps import run_app
from images import CLASSES, make_folder
from support import mlflow_client, where

pytestmark = pytest.mark.slow
MODEL = ["model=resnet18_narrow", "model.width=4", "trainer.device=cpu", "trainer.batch_size=12"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_npz):
    tmp = tmp_path_factory.mktemp("chain")
    root = tmp / "my images"  # a space in the path, as users' folders have
    make_folder(root, "train/test", n_train=24, n_test=8)
    place = [*where(tmp, tiny_npz)[:3], f"paths.data_dir={tmp / 'data'}"]
    data = ["data=image_folder", f"data.path={root}", "data.image_size=16"]
    found = run_app(
        "find_lr.py",
        *data,
        *MODEL,
        *place,
        "lr_finder.num_iter=20",
        "lr_finder.runs=1",
        "lr_finder.start_lr=1e-3",
        "lr_finder.end_lr=0.5",
    )
    assert found.returncode == 0, found.stderr[-3000:]
    command = found.stdout.strip().splitlines()[-1]
    words = shlex.split(command)
    assert words[:3] == ["python", "train.py", "-m"] and f"data.path={root}" in words
    sweep = run_app("train.py", *words[2:], "trainer.epochs=1,3", *place)  # the printed sweep, two jobs
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    client = mlflow_client(tmp / "mlruns")
    runs = client.search_runs([client.get_experiment_by_name("cifar10").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("sweeplab.kind") == "sweep"]
    jobs = [r for r in runs if r is not parent]
    return {"tmp": tmp, "root": root, "place": place, "client": client, "parent": parent, "jobs": jobs}


def test_the_sweep_find_lr_printed_ran_under_one_parent_with_its_report(chain):
    parent, jobs, client = chain["parent"], chain["jobs"], chain["client"]
    assert len(jobs) == 2 and {r.info.status for r in jobs} == {"FINISHED"} and parent.info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {parent.info.run_id}
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {"report/comparison.md"}


def test_each_run_records_the_folder_it_trained_on(chain):
    for run in chain["jobs"]:
        inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
        train = inputs["image_folder-training"]
        assert train.dataset.source_type == "local" and str(chain["root"]) in train.dataset.source
        tags = {t.key: t.value for t in train.tags}
        assert tags["classes"] == ",".join(CLASSES) and tags["sha256"] == run.data.tags["sweeplab.data.train_sha256"]
        assert run.data.tags["sweeplab.data.train_size"] == "72"  # 24 images of each of the 3 classes


def test_the_registered_model_predicts_the_folders_classes(chain):
    client = chain["client"]
    version = client.get_model_version_by_alias("image_folder-resnet18", "best")
    saved = OmegaConf.load(client.download_artifacts(version.run_id, "config/config.yaml", str(chain["tmp"] / "cfg")))
    test = load_test_set(saved, OmegaConf.create({"npz": None, "root": None, "path": None}))
    images, labels = test.test.images.numpy(), test.test.labels.numpy()
    assert images.shape == (24, 3, 16, 16) and images.dtype == np.uint8
    tracking.use_store(client.tracking_uri)
    answer = mlflow.pyfunc.load_model("models:/image_folder-resnet18@best").predict(images)
    recorded = client.get_run(version.run_id).data.metrics["best_test_acc"]
    assert all(list(p) == list(CLASSES) for p in answer["probabilities"])  # the folders' names, in their order
    named = np.array(CLASSES)[labels]
    assert set(answer["class"]) <= set(CLASSES) and float((answer["class"] == named).mean()) == pytest.approx(recorded)


def test_explain_names_the_folders_classes(chain, tmp_path):
    done = run_app("explain.py", *chain["place"][:2], f"output_dir={tmp_path}", "num_images=4", "cols=2")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["per_class_acc"]) == set(CLASSES) and (tmp_path / "misclassified_grid.png").is_file()


def test_a_run_reproduces_from_its_saved_config(chain):
    client = chain["client"]
    (one_epoch,) = [r for r in chain["jobs"] if r.data.params["trainer.epochs"] == "1"]
    done = run_app("train.py", f"reproduce={one_epoch.info.run_id}", *chain["place"])
    assert done.returncode == 0, done.stderr[-3000:]
    (rerun,) = client.search_runs(
        [one_epoch.info.experiment_id], f"tags.`sweeplab.reproduces` = '{one_epoch.info.run_id}'"
    )
    history = [client.get_metric_history(r.info.run_id, "test_acc")[0].value for r in (one_epoch, rerun)]
    assert history[0] == history[1]
