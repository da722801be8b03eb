"""MLflow models and the Model Registry: each run logs its best weights as a model that MLflow alone
loads and serves, where sweeplab is not installed; a sweep registers its best run's model and moves
the alias @best only to a better one."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import requests

from support import CLASSES, ROOT, entry_env, free_port, stop_process_group
from sweeps import registry_sweeps

pytestmark = pytest.mark.slow
NAME = "cifar10-resnet18"
WITHOUT_SWEEPLAB = ROOT / "tests" / "without_sweeplab"


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


def without_sweeplab(store, **extra) -> dict:
    """A process's environment where neither sweeplab nor sweeplab_model can be imported (see
    tests/without_sweeplab/sitecustomize.py), pointed at ``store``."""
    env = entry_env(MLFLOW_TRACKING_URI=f"sqlite:///{store / 'mlflow.db'}", **extra)
    return {**env, "PYTHONPATH": str(WITHOUT_SWEEPLAB)}


def test_the_best_model_loads_without_sweeplab_and_names_the_classes(registry, tiny_npz):
    """In a process that cannot import sweeplab (nor sweeplab_model from the project), the registered
    model loads with mlflow.pyfunc and mlflow.pytorch alone; the pyfunc names the data set's classes
    with their probabilities, and on the run's test images scores the run's recorded test accuracy.
    Its requirements name what loading it needs, nothing of the training stack."""
    s = registry["better"]
    client = s["client"]
    version = client.get_model_version_by_alias(NAME, "best")
    recorded = client.get_run(version.run_id).data.metrics["best_test_acc"]
    script = f"""
import importlib.util, json, sys, mlflow, mlflow.pytorch, numpy as np, torch
blocked = [m for m in ("sweeplab", "sweeplab_model") if importlib.util.find_spec(m) is None]
z = np.load({str(tiny_npz)!r})
images = np.ascontiguousarray(z["test_images"].transpose(0, 3, 1, 2))
uri = "models:/{NAME}@best"
answer = mlflow.pyfunc.load_model(uri).predict(images)
net = mlflow.pytorch.load_model(uri)
probs = net(torch.as_tensor(images[:5])).numpy()
info = mlflow.models.get_model_info(uri)
folder = mlflow.artifacts.download_artifacts(uri)
print(json.dumps({{
    "blocked": blocked,
    "columns": list(answer.columns),
    "classes": answer["class"].tolist(),
    "probability": answer["probability"].tolist(),
    "probabilities": answer["probabilities"].tolist(),
    "net": [type(net).__module__, type(net).__name__, list(net.classes)],
    "net_argmax": probs.argmax(1).tolist(), "net_sums": probs.sum(1).tolist(),
    "code_from": sys.modules["sweeplab_model"].__file__,
    "signature": info.signature.to_dict(),
    "example": mlflow.models.Model.load(folder).load_input_example(folder).dtype.name,
    "requirements": open(folder + "/requirements.txt").read().split(),
}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=without_sweeplab(s["store"])
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["blocked"] == ["sweeplab", "sweeplab_model"]  # the project's own copies were out of reach
    assert "/code/sweeplab_model/" in out["code_from"]  # the model's own copy was used
    assert out["columns"] == ["class", "probability", "probabilities"]
    labels = np.load(tiny_npz)["test_labels"]
    assert np.mean(np.array(out["classes"]) == np.array(CLASSES)[labels]) == pytest.approx(recorded, abs=1e-9)
    for name, p, every in zip(out["classes"], out["probability"], out["probabilities"]):
        assert list(every) == list(CLASSES) and sum(every.values()) == pytest.approx(1, abs=1e-6)
        assert p == every[name] == max(every.values())
    assert out["net"] == ["sweeplab_model.classifier", "Classifier", list(CLASSES)]
    assert [CLASSES[i] for i in out["net_argmax"]] == out["classes"][:5]
    assert out["net_sums"] == pytest.approx([1] * 5, abs=1e-6)
    inputs, outputs = (json.loads(out["signature"][k]) for k in ("inputs", "outputs"))
    assert inputs == [{"type": "tensor", "tensor-spec": {"dtype": "uint8", "shape": [-1, 3, 32, 32]}}]
    assert [o["name"] for o in outputs] == ["class", "probability", "probabilities"]
    assert sorted(outputs[2]["properties"]) == sorted(CLASSES) and out["example"] == "uint8"
    needed = sorted(r.split("==")[0] for r in out["requirements"])
    assert needed == ["cloudpickle", "mlflow", "numpy", "pandas", "torch"]  # no hydra, torchvision, grad-cam, ...


def test_the_best_model_is_served_without_sweeplab(registry, tmp_path, tiny_npz):
    """``mlflow models serve -m models:/<name>@best --env-manager local`` where sweeplab cannot be
    imported answers /invocations with class names and probabilities."""
    s = registry["better"]
    port, log = free_port(), tmp_path / "processes.txt"
    serve = ["models", "serve", "-m", f"models:/{NAME}@best", "--env-manager", "local", "-h", "127.0.0.1"]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", *serve, "-p", str(port)],
        env=without_sweeplab(s["store"], WITHOUT_SWEEPLAB_LOG=str(log)),
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "server.log", "w"),
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        up, deadline = False, time.monotonic() + 180
        while not up and time.monotonic() < deadline and server.poll() is None:
            try:
                up = requests.get(f"{url}/ping", timeout=2).status_code == 200
            except requests.RequestException:
                time.sleep(0.5)
        assert up, (tmp_path / "server.log").read_text()[-3000:]
        z = np.load(tiny_npz)
        images = z["test_images"][:3].transpose(0, 3, 1, 2)
        answer = requests.post(f"{url}/invocations", json={"inputs": images.tolist()}, timeout=60)
    finally:
        stop_process_group(server)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert len(predictions) == 3
    for p in predictions:
        assert p["class"] in CLASSES and p["probability"] == max(p["probabilities"].values())
        assert list(p["probabilities"]) == list(CLASSES)
    # The server's own worker ran without the project's packages (it inherited the environment).
    assert any("uvicorn" in line for line in log.read_text().splitlines()), log.read_text()
