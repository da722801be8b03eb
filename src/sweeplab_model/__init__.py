"""What a model that sweeplab logs is made of, and nothing else: the CIFAR ResNet, the classifier that
wraps a network with its input normalization and class names, and the MLflow pyfunc that answers with
class names and probabilities.

Every model sweeplab logs to MLflow carries a copy of this package (MLflow's ``code_paths``), so
``mlflow.pyfunc.load_model``, ``mlflow.pytorch.load_model`` and ``mlflow models serve`` work where
sweeplab is not installed: a serving machine, a Docker image, a colleague's notebook. It imports
torch, numpy and pandas only (and mlflow, in ``pyfunc``); never sweeplab, Hydra or anything of the
training stack."""

from sweeplab_model.classifier import Classifier
from sweeplab_model.resnet import BasicBlock, ResNet

__all__ = ["BasicBlock", "Classifier", "ResNet"]
