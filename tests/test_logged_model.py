"""The MLflow model a run logs, in-process: what it carries (the code it needs, the packages it
needs and no more), and its answer for a data set's own class names. tests/test_registry.py loads
and serves a sweep's registered model where sweeplab cannot be imported."""

from __future__ import annotations

import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

import sweeplab_model
from sweeplab import models, tracking
from sweeplab.data.cifar import CIFAR100_CLASSES
from sweeplab_model import Classifier

from support import new_store

CIFAR = ([0.5] * 3, [0.25] * 3)


def test_a_model_needs_its_own_code_and_only_the_packages_its_classes_come_from(tmp_path, monkeypatch):
    bundled = str(Path(sweeplab_model.__file__).parent)
    resnet = Classifier(models.resnet18(width=4), *CIFAR)
    assert tracking.model_needs(resnet) == ([bundled], [])  # torch, numpy, pandas, mlflow: always
    mobilenet = Classifier(models.torchvision_model("mobilenet_v3_small", 10, small_input=True), *CIFAR)
    assert tracking.model_needs(mobilenet) == ([bundled], ["torchvision"])

    (tmp_path / "mynets.py").write_text("from torch import nn\n\nclass Tiny(nn.Sequential):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from mynets import Tiny  # a user's own module, installed nowhere: it travels with the model

    own = Classifier(Tiny(nn.Conv2d(3, 10, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()), *CIFAR)
    assert tracking.model_needs(own) == ([bundled, str(tmp_path / "mynets.py")], [])
    monkeypatch.delitem(sys.modules, "mynets")

    stuck = type("Net", (nn.Module,), {"__module__": "sweeplab.somewhere"})  # sweeplab itself cannot travel
    with pytest.raises(ValueError, match="holds a class of 'sweeplab', which cannot travel with it"):
        tracking.model_needs(Classifier(stuck(), *CIFAR))


def test_the_pyfunc_answers_the_data_sets_own_class_names_and_probabilities(tmp_path):
    """A torchvision model on CIFAR-100's 100 classes: the answer names them, the signature lists them,
    and the requirements add torchvision to what every model needs, nothing of the training stack."""
    torch.manual_seed(0)
    net = models.torchvision_model("mobilenet_v3_small", 100, small_input=True)
    classifier = Classifier(net, *CIFAR, classes=CIFAR100_CLASSES).eval()
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    experiment = tracking.setup(
        OmegaConf.create({"uri": None, "store_dir": str(new_store(tmp_path)), "experiment": "x"})
    )
    with tracking.open_run(experiment, "model"):
        uri = tracking.log_model(classifier, images[:2])
    answer = mlflow.pyfunc.load_model(uri).predict(images)
    expected = classifier(torch.as_tensor(images)).numpy()
    assert list(answer["class"]) == [CIFAR100_CLASSES[i] for i in expected.argmax(1)]
    assert np.allclose(answer["probability"], expected.max(1)) and np.allclose(expected.sum(1), 1, atol=1e-5)
    assert all(list(p) == list(CIFAR100_CLASSES) for p in answer["probabilities"])
    assert np.allclose([list(p.values()) for p in answer["probabilities"]], expected)
    info = mlflow.models.get_model_info(uri)
    outputs = info.signature.outputs.to_dict()
    assert [o["name"] for o in outputs] == ["class", "probability", "probabilities"]
    assert list(outputs[2]["properties"]) == sorted(CIFAR100_CLASSES)
    folder = Path(mlflow.artifacts.download_artifacts(uri))
    needs = sorted(line.split("==")[0] for line in (folder / "requirements.txt").read_text().split())
    assert needs == ["cloudpickle", "mlflow", "numpy", "pandas", "torch", "torchvision"]
    assert sorted(p.name for p in (folder / "code" / "sweeplab_model").iterdir()) == sorted(
        p.name for p in Path(sweeplab_model.__file__).parent.glob("*.py")
    )
