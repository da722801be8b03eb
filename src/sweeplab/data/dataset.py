"""A data set as the project holds it: uint8 image tensors and labels per split, its classes, where it came
from and its normalization."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from sweeplab.errors import ConfigError


class DataError(ConfigError):
    """The data set cannot be found or read."""


@dataclass
class Split:
    images: torch.Tensor  # (N, 3, H, W) uint8
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))

    def checksum(self) -> str:
        """sha256 of the images and labels, so a run records exactly what it trained on."""
        h = hashlib.sha256(self.images.cpu().numpy().tobytes())
        h.update(self.labels.cpu().numpy().tobytes())
        return h.hexdigest()


@dataclass
class Dataset:
    train: Split
    test: Split
    val: Split | None
    classes: tuple[str, ...]
    name: str = "cifar10"
    source: str = ""  # where it was read from: a file path or a download URL (MLflow's dataset source)
    # Normalization on [0, 1] pixels: the config's, else the data's own (data.from_config fills them).
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    # An image folder's content key (relative paths, sizes, modification times and the decoding
    # settings; also its cache file's name) and the cache file; empty for the CIFAR sets.
    fingerprint: str = ""
    cache: str = ""
    skipped: tuple[str, ...] = field(default_factory=tuple)  # unreadable image files left out, "path: reason"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[-1])


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 NCHW images, on [0, 1] pixels (exact sums, in chunks)."""
    if not len(images):
        raise DataError("no training images to compute the normalization statistics from")
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for part in images.split(chunk):
        x = part.to("cpu", torch.float64).transpose(0, 1).reshape(images.shape[1], -1)
        total += x.sum(1)
        squares += (x * x).sum(1)
    n = images.numel() / images.shape[1]
    mean = total / n
    std = (squares / n - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std) * 255)  # a constant channel: leave it unscaled
    return tuple(round(float(v) / 255, 6) for v in mean), tuple(round(float(v) / 255, 6) for v in std)


def limit(
    train: Split, test: Split, train_limit: int | None, test_limit: int | None, val_split: int
) -> tuple[Split, Split, Split | None]:
    """The first ``train_limit`` / ``test_limit`` images, and the last ``val_split`` of those training
    images held out as a validation split."""
    train = Split(train.images[:train_limit], train.labels[:train_limit])
    test = Split(test.images[:test_limit], test.labels[:test_limit])
    val = None
    if val_split:
        if val_split >= len(train):
            raise DataError(f"data.val_split={val_split} leaves no training images out of {len(train)}")
        cut = len(train) - val_split
        train, val = Split(train.images[:cut], train.labels[:cut]), Split(train.images[cut:], train.labels[cut:])
    return train, test, val


