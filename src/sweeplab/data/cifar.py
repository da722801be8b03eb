"""CIFAR-10 and CIFAR-100: from torchvision's download or a local copy in the cifar10.npz layout."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sweeplab.data.dataset import DataError, Dataset, Split, limit
from sweeplab.errors import first_line

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# CIFAR-100's fine labels, in label order (torchvision's CIFAR100.classes).
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel
    can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur
    dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion
    lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree
    pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea
    seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table
    tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman
    worm""".split()
)
NPZ_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
NPZ_ENV = "SWEEPLAB_CIFAR10_NPZ"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"  # what torchvision downloads
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"


@dataclass(frozen=True)
class Cifar:
    """One of the CIFAR data sets: where torchvision gets it and what a local npz copy defaults to."""

    title: str
    classes: tuple[str, ...]
    url: str
    env: str  # the environment variable naming a local npz copy
    torchvision_class: str


CIFAR = {
    "cifar10": Cifar("CIFAR-10", CIFAR10_CLASSES, CIFAR10_URL, NPZ_ENV, "CIFAR10"),
    "cifar100": Cifar("CIFAR-100", CIFAR100_CLASSES, CIFAR100_URL, "SWEEPLAB_CIFAR100_NPZ", "CIFAR100"),
}



def _split(images: np.ndarray, labels, limit: int | None) -> Split:
    images = torch.from_numpy(np.ascontiguousarray(images[:limit])).permute(0, 3, 1, 2).contiguous()
    return Split(images, torch.as_tensor(np.asarray(labels[:limit]), dtype=torch.int64))


def _read_npz(path: Path, default_classes: tuple[str, ...] = CIFAR10_CLASSES):
    if not path.is_file():
        raise DataError(f"data.npz={path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in NPZ_KEYS if k not in z.files]
            if missing:
                raise DataError(f"{path} lacks the arrays {', '.join(missing)} (expected {', '.join(NPZ_KEYS)})")
            arrays = {k: z[k] for k in NPZ_KEYS}
            classes = tuple(str(c) for c in z["classes"]) if "classes" in z.files else default_classes
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


def _read_torchvision(root: Path, download: bool, name: str = "cifar10"):
    import torchvision.datasets

    kind = CIFAR[name]
    try:
        sets = [
            getattr(torchvision.datasets, kind.torchvision_class)(str(root), train=t, download=download)
            for t in (True, False)
        ]
    except (RuntimeError, OSError) as err:  # offline, or not downloaded with download=false
        raise DataError(
            f"{kind.title} is not in {root} and could not be downloaded ({first_line(err)}); "
            f"connect to the internet, or point data.npz=/path/{name}.npz "
            f"(or ${kind.env}) at a local copy"
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
    name: str = "cifar10",
) -> Dataset:
    """Read CIFAR-10 or CIFAR-100 (``name``; npz copy if given, else torchvision) as CPU uint8 tensors in NCHW.

    ``val_split`` holds out the last N training images (after ``train_limit``) as a validation split.
    """
    if npz:
        source = str(Path(npz).expanduser().resolve())
        arrays, classes = _read_npz(Path(npz).expanduser(), CIFAR[name].classes)
    else:
        source = CIFAR[name].url
        arrays, classes = _read_torchvision(Path(root).expanduser(), download, name)
    train = _split(arrays["train_images"], arrays["train_labels"], train_limit)
    test = _split(arrays["test_images"], arrays["test_labels"], test_limit)
    train, test, val = limit(train, test, None, None, val_split)
    return Dataset(train, test, val, classes, name=name, source=source)


