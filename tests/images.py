"""Small image folders the tests build themselves: a few classes of generated PNG and JPEG images of
different sizes and modes, in the torchvision ImageFolder layouts."""

from __future__ import annotations

import numpy as np
from PIL import Image

CLASSES = ("cross", "disc", "square")


def draw(label: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """An (H, W, 3) uint8 image of class ``label``: a bright block at a class-specific place and colour on
    noise, so a tiny network learns it whatever the image's size."""
    w, h = size
    img = rng.integers(0, 80, size=(h, w, 3), dtype=np.uint8)
    top, left = [(0.1, 0.1), (0.5, 0.5), (0.1, 0.5)][label % 3]
    r, c = int(top * h), int(left * w)
    img[r : r + h * 2 // 5, c : c + w * 2 // 5, label % 3] = 250
    return img


def write_images(folder, label: int, n: int, rng: np.random.Generator, start: int = 0) -> None:
    """``n`` images of class ``label``: PNG and JPEG in turn, of different sizes (and one grayscale PNG)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        size = (int(rng.integers(20, 64)), int(rng.integers(20, 64)))
        image = Image.fromarray(draw(label, size, rng))
        if i % 2:
            image.save(folder / f"{i:03d}.jpg", quality=95)
        elif i % 5 == 4:
            image.convert("L").save(folder / f"{i:03d}.png")
        else:
            image.save(folder / f"{i:03d}.png")


def make_folder(root, layout: str = "train/test", n_train: int = 12, n_test: int = 4, classes=CLASSES, seed=0):
    """An image folder: ``train/<class>`` with ``test/<class>`` (or ``val/``), or one tree (``split``)."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        if layout == "split":
            write_images(root / name, label, n_train + n_test, rng)
        else:
            write_images(root / "train" / name, label, n_train, rng)
            write_images(root / layout.split("/")[1] / name, label, n_test, rng)
    return root
