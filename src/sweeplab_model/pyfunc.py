"""The MLflow pyfunc of a logged Classifier (its MLmodel names this module as the pyfunc's loader):
a batch of uint8 images (N, 3, H, W) in; per image the class name, its probability, and the
probability of every class by name out. ``mlflow.pyfunc.load_model`` and ``mlflow models serve``
call ``_load_pyfunc``; the network itself is read back by MLflow's own pytorch flavour."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch

CHUNK = 1000  # images per forward pass: a large request does not need memory for all its activations at once


def _load_pyfunc(data_path: str, model_config: dict | None = None) -> Predictor:
    """MLflow's loader entry point. ``data_path`` is the model's ``data`` folder; the device is
    ``model_config={"device": ...}`` at load time, else CUDA when present, else the CPU."""
    # MLflow's own loader, not torch.load of its file: it keeps MLflow's guard on unpickling
    # (MLFLOW_ALLOW_PICKLE_DESERIALIZATION). This package runs inside MLflow's pyfunc, outside
    # sweeplab; within sweeplab only its tracking package imports MLflow.
    import mlflow.pytorch

    device = (model_config or {}).get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    model_dir = os.path.dirname(os.path.normpath(data_path))
    return Predictor(mlflow.pytorch.load_model(model_dir, map_location=device), device)


class Predictor:
    def __init__(self, classifier, device: str = "cpu"):
        self.classifier, self.device = classifier.eval(), torch.device(device)

    def predict(self, images, params: dict | None = None) -> pd.DataFrame:
        """One row per image: ``class`` (the most probable class's name), ``probability`` (its
        probability) and ``probabilities`` (class name -> probability, every class)."""
        images = torch.as_tensor(np.asarray(images))
        names = self.classifier.classes
        parts = [self.classifier(part.to(self.device)).cpu() for part in images.split(CHUNK)]
        probs = (torch.cat(parts) if parts else torch.zeros(0, len(names))).double().numpy()
        best = probs.argmax(1)
        names = names or tuple(str(i) for i in range(probs.shape[1]))
        return pd.DataFrame(
            {
                "class": [names[i] for i in best],
                "probability": probs[np.arange(len(best)), best],
                "probabilities": [dict(zip(names, row.tolist())) for row in probs],
            }
        )
