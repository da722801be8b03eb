"""CIFAR-10 from torchvision or a local npz, kept as uint8 tensors on the training device, with
batched crop/flip/normalize done there instead of a per-image PIL pipeline."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sweeplab.errors import ConfigError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
NPZ_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
NPZ_ENV = "SWEEPLAB_CIFAR10_NPZ"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"  # what torchvision downloads


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


def _split(images: np.ndarray, labels, limit: int | None) -> Split:
    images = torch.from_numpy(np.ascontiguousarray(images[:limit])).permute(0, 3, 1, 2).contiguous()
    return Split(images, torch.as_tensor(np.asarray(labels[:limit]), dtype=torch.int64))


def _read_npz(path: Path):
    if not path.is_file():
        raise DataError(f"data.npz={path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in NPZ_KEYS if k not in z.files]
            if missing:
                raise DataError(f"{path} lacks the arrays {', '.join(missing)} (expected {', '.join(NPZ_KEYS)})")
            arrays = {k: z[k] for k in NPZ_KEYS}
            classes = tuple(str(c) for c in z["classes"]) if "classes" in z.files else CIFAR10_CLASSES
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"{path} is not a readable npz file ({type(err).__name__}: {err})") from None
    for part in ("train", "test"):
        imgs, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if imgs.dtype != np.uint8 or imgs.ndim != 4 or imgs.shape[3] != 3 or len(imgs) != len(labels):
            raise DataError(
                f"{path}: {part}_images must be (N, H, W, 3) uint8 with one label each, "
                f"got {imgs.shape} {imgs.dtype} and {len(labels)} labels"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DataError(f"{path}: {part}_labels must lie in 0..{len(classes) - 1}")
    return arrays, classes


def _read_torchvision(root: Path, download: bool):
    from torchvision.datasets import CIFAR10

    try:
        sets = [CIFAR10(str(root), train=train, download=download) for train in (True, False)]
    except (RuntimeError, OSError) as err:  # offline, or not downloaded with download=false
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(
            f"CIFAR-10 is not in {root} and could not be downloaded ({reason}); "
            f"connect to the internet, or point data.npz=/path/cifar10.npz "
            f"(or ${NPZ_ENV}) at a local copy"
        ) from None
    arrays = {
        "train_images": sets[0].data,
        "train_labels": np.asarray(sets[0].targets),
        "test_images": sets[1].data,
        "test_labels": np.asarray(sets[1].targets),
    }
    return arrays, tuple(sets[0].classes)


def load_dataset(
    root: str | Path,
    npz: str | Path | None = None,
    download: bool = True,
    train_limit: int | None = None,
    test_limit: int | None = None,
    val_split: int = 0,
) -> Dataset:
    """Read CIFAR-10 (npz copy if given, else torchvision) as CPU uint8 tensors in NCHW.

    ``val_split`` holds out the last N training images (after ``train_limit``) as a validation split.
    """
    if npz:
        source = str(Path(npz).expanduser().resolve())
        arrays, classes = _read_npz(Path(npz).expanduser())
    else:
        source = CIFAR10_URL
        arrays, classes = _read_torchvision(Path(root).expanduser(), download)
    train = _split(arrays["train_images"], arrays["train_labels"], train_limit)
    test = _split(arrays["test_images"], arrays["test_labels"], test_limit)
    val = None
    if val_split:
        if val_split >= len(train):
            raise DataError(f"data.val_split={val_split} leaves no training images out of {len(train)}")
        cut = len(train) - val_split
        train, val = Split(train.images[:cut], train.labels[:cut]), Split(train.images[cut:], train.labels[cut:])
    return Dataset(train, test, val, classes, source=source)


@dataclass
class Augment:
    """The baseline's augmentation, batched: pad + random crop back to size, horizontal flip."""

    crop_padding: int = 0
    pad_mode: str = "reflect"  # or zeros
    flip: bool = False

    def pad(self, images: torch.Tensor, chunk: int = 10_000) -> torch.Tensor:
        """Pad a whole uint8 split once, so each batch only gathers its crops."""
        p = self.crop_padding
        if not p:
            return images
        if self.pad_mode == "zeros":
            return F.pad(images, (p, p, p, p))
        return torch.cat([F.pad(c.float(), (p, p, p, p), mode="reflect").to(torch.uint8) for c in images.split(chunk)])

    def __call__(
        self, padded: torch.Tensor, idx: torch.Tensor, size: int, gen: torch.Generator, chunk: int = 10_000
    ) -> torch.Tensor:
        """Random ``size`` crops of ``padded[idx]``, randomly mirrored, in the order of ``idx``.

        Applied to a whole epoch at once (as airbench does): a few large masked copies, one per
        row offset and one per column offset, instead of per-image work or a per-batch gather.
        """
        return torch.cat([self._crop_flip(padded[part], size, gen) for part in idx.split(chunk)])

    def _crop_flip(self, x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
        n, c, dev, p = len(x), x.shape[1], x.device, self.crop_padding
        if p:
            dy = torch.randint(0, 2 * p + 1, (n,), device=dev, generator=gen)
            dx = torch.randint(0, 2 * p + 1, (n,), device=dev, generator=gen)
            rows = torch.empty((n, c, size, x.shape[3]), dtype=x.dtype, device=dev)
            for off in range(2 * p + 1):
                m = dy == off
                rows[m] = x[m, :, off : off + size, :]
            x = torch.empty((n, c, size, size), dtype=x.dtype, device=dev)
            for off in range(2 * p + 1):
                m = dx == off
                x[m] = rows[m, :, :, off : off + size]
        if self.flip:
            mask = torch.rand(n, device=dev, generator=gen) < 0.5
            x = torch.where(mask[:, None, None, None], x.flip(3), x)
        return x


class DeviceLoader:
    """Batches of a Split that lives on ``device``: shuffle, augment and normalize there.

    Each epoch draws its order and augmentation from a generator seeded by (seed, epoch), so a
    resumed run sees exactly the batches an uninterrupted one would.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        device: torch.device,
        mean,
        std,
        *,
        augment: Augment | None = None,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        channels_last: bool = False,
    ):
        self.device, self.batch_size, self.shuffle, self.drop_last = device, batch_size, shuffle, drop_last
        self.augment, self.seed, self.epoch = augment, seed, 0
        split = split.to(device)
        self.labels, self.size = split.labels, split.images.shape[-1]
        self.images = augment.pad(split.images) if augment else split.images
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self) * self.batch_size if self.drop_last else len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().sub_(self.mean).div_(self.std)  # in place: one float tensor per batch
        return x.contiguous(memory_format=self.memory_format)

    def __iter__(self):
        n = len(self.labels)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.seed * 1_000_003 + self.epoch)
        order = (
            torch.randperm(n, device=self.device, generator=gen)
            if self.shuffle
            else torch.arange(n, device=self.device)
        )
        epoch_images = self.augment(self.images, order, self.size, gen) if self.augment else None
        for i in range(len(self)):
            batch = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx = order[batch]
            x = epoch_images[batch] if epoch_images is not None else self.images[idx]
            yield self.normalize(x), self.labels[idx]
