"""The model a run hands over through MLflow: raw images in, class probabilities out."""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """A trained network with its input normalization and class names: uint8 images (N, 3, H, W), as
    the data set stores them, in; (N, classes) probabilities out, column i for ``classes[i]``.
    ``net`` is the network itself (logits), which explain.py uses for its heat maps. ``mean`` and
    ``std`` are the data's, on [0, 1] pixels, as the data set and the loaders hold them."""

    def __init__(self, net: nn.Module, mean, std, classes=()):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.classes = tuple(classes)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 pixels as the network saw them in training (the same arithmetic as the DeviceLoader's)."""
        return (images.float() - self.mean * 255) / (self.std * 255)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(images)).float().softmax(1)
