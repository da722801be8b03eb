"""MLflow models and the Model Registry: each run logs its best weights as a model that MLflow alone
loads; a sweep registers its best run's model and moves the alias @best only to a better one."""

import json
import subprocess
import sys

import pytest

from support import entry_env
from sweeps import registry_sweeps

pytestmark = pytest.mark.slow
NAME = "cifar10-resnet18"


@pytest.fixture(scope="module")
def registry(tiny_npz):
    sweeps = registry_sweeps(tiny_npz)
    for name, s in sweeps.items():
        assert s["result"].returncode == 0, (name, s["result"].stderr[-3000:])
    return sweeps


def parent_of(s, name):
    client = s["client"]
    runs = client.search_runs([s["experiment"].experiment_id], "tags.`sweeplab.kind` = 'sweep'")
    sweep_ids = {r.data.tags["sweeplab.sweep"]: r for r in runs}
    # The sweep folder's own record names its id.
    (sweep_dir,) = s["sweep_dirs"]
    facts = json.loads((sweep_dir / ".sweeplab" / "sweep.json").read_text())
    return sweep_ids[facts["id"]]


def test_alias_moves_only_to_a_better_model(registry):
    client = registry["first"]["client"]
    versions = {int(v.version): v for v in client.search_model_versions(f"name='{NAME}'")}
    assert sorted(versions) == [1, 2, 3]
    parents = {name: parent_of(s, name) for name, s in registry.items()}
    for number, name in enumerate(("first", "worse", "better"), start=1):
        tags = parents[name].data.tags
        assert tags["sweeplab.registered_model"] == NAME and tags["sweeplab.registered_version"] == str(number)
        assert versions[number].run_id == tags["sweeplab.sweep.best_run"]
    value = {n: float(versions[n].tags["best_test_acc"]) for n in versions}
    assert value[2] < value[1] < value[3]
    assert parents["first"].data.tags["sweeplab.registered_best"] == "true"  # nothing held @best yet
    assert parents["worse"].data.tags["sweeplab.registered_best"] == "false"  # worse: @best stayed on 1
    assert parents["better"].data.tags["sweeplab.registered_best"] == "true"  # better: @best moved to 3
    assert int(client.get_model_version_by_alias(NAME, "best").version) == 3


def test_the_best_model_loads_with_mlflow_alone_and_predicts_the_recorded_accuracy(registry, tiny_npz):
    """In a fresh process, mlflow.pyfunc.load_model('models:/<name>@best') predicts class indices for
    uint8 CIFAR-sized images; on the run's test images it scores the run's recorded test accuracy."""
    s = registry["better"]
    client = s["client"]
    version = client.get_model_version_by_alias(NAME, "best")
    recorded = client.get_run(version.run_id).data.metrics["best_test_acc"]
    script = f"""
import json, mlflow, numpy as np
z = np.load({str(tiny_npz)!r})
images = np.ascontiguousarray(z["test_images"].transpose(0, 3, 1, 2))
predicted = mlflow.pyfunc.load_model("models:/{NAME}@best").predict(images)
print(json.dumps({{"dtype": str(predicted.dtype), "shape": list(predicted.shape),
                  "accuracy": float((predicted == z["test_labels"]).mean())}}))
"""
    uri = f"sqlite:///{s['store'] / 'mlflow.db'}"
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env=entry_env(MLFLOW_TRACKING_URI=uri),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["dtype"] == "int64" and out["shape"] == [200]
    assert out["accuracy"] == pytest.approx(recorded, abs=1e-9)
