"""Models logged by earlier versions pickled their Classifier by this module's name: this keeps them
loadable (by explain.py, or mlflow.pytorch.load_model where sweeplab is installed). The class itself
lives in sweeplab_model, which every logged model carries with it."""

from sweeplab_model.classifier import Classifier

__all__ = ["Classifier"]
