"""Your own images: a folder of class folders, listed, decoded once in threads and cached as an npz file
that later runs read while the folder is unchanged."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sweeplab.atomic import atomic_write
from sweeplab.data.dataset import DataError, Dataset, Split, channel_stats
from sweeplab.data.memory import format_bytes

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TEST_DIRS = ("test", "val")  # below the root, beside train/: the first one present is the test split
CACHE_VERSION = 1  # bump when the decoding changes: old cache files are then never read
PROGRESS_MIN_IMAGES = 500  # a progress bar while decoding at least this many images (on a terminal)


@dataclass
class FolderPlan:
    """What an image folder holds, found by listing it: nothing decoded yet."""

    root: Path
    layout: str  # "train/test", "train/val", or "split" (one tree, split by test_fraction)
    classes: tuple[str, ...]
    train: list[tuple[str, int]]  # (path relative to root, label), in the split's (seeded, shuffled) order
    test: list[tuple[str, int]]
    image_size: int
    resize: str
    key: str  # sha256 of the listing (relative paths, sizes, modification times, labels) and the settings
    stem: str  # sha256 of the root and the settings: a newer key with the same stem replaces the cache file
    ignored: int = 0  # files left out because their extension is not an image's

    def cache_file(self, cache_dir: str | Path) -> Path:
        return Path(cache_dir).expanduser().resolve() / f"image_folder-{self.stem[:12]}-{self.key[:20]}.npz"


def scan_image_folder(
    path: str | Path | None,
    image_size: int = 64,
    resize: str = "stretch",
    test_fraction: float = 0.2,
    split_seed: int = 0,
) -> FolderPlan:
    """List an image folder in the torchvision ImageFolder layout, without decoding anything.

    ``<path>/train/<class>/...`` with ``<path>/test/<class>/...`` (or ``val/``) are the two splits;
    otherwise ``<path>/<class>/...`` (or ``<path>/train/<class>/...`` alone) is one tree, split per
    class: ``test_fraction`` of each class's images, chosen with ``split_seed``, are the test split.
    Classes are the training class folders, sorted; files are found recursively below each class
    folder by extension. Both splits are put in a seeded random order, so that ``train_limit``,
    ``test_limit`` and ``val_split`` take images of every class. The settings were checked with the
    config (sweeplab.checks).
    """
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"data.path={path} {'is not a folder' if root.exists() else 'does not exist'}")
    test_dir = next((root / d for d in TEST_DIRS if (root / d).is_dir()), None)
    has_train = (root / "train").is_dir()
    if test_dir is not None and not has_train:
        raise DataError(f"data.path={root} has {test_dir.name}/ but no train/ folder beside it")
    rng = np.random.default_rng(split_seed)
    if has_train and test_dir is not None:
        layout = f"train/{test_dir.name}"
        train_files, ignored = _class_files(root, root / "train")
        test_files, ignored_test = _class_files(root, test_dir)
        ignored += ignored_test
        classes = tuple(sorted(train_files))
        missing = sorted(set(test_files) - set(train_files))
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise DataError(
                f"data.path={root}: {test_dir.name}/ has classes that train/ lacks: {', '.join(missing[:5])}{more} "
                f"(a model cannot learn them; add train/<class>/ folders or remove them from {test_dir.name}/)"
            )
        absent = sorted(set(train_files) - set(test_files))
        if absent:
            log.warning(
                f"data.path={root}: {test_dir.name}/ has no images of {len(absent)} class(es): {', '.join(absent)}"
            )
        index = {c: i for i, c in enumerate(classes)}
        train = [(f, index[c]) for c in classes for f in train_files[c]]
        test = [(f, index[c]) for c in sorted(test_files) for f in test_files[c]]
    else:
        layout = "split"
        files, ignored = _class_files(root, root / "train" if has_train else root)
        classes = tuple(sorted(files))
        train, test = [], []
        for label, c in enumerate(classes):
            order = rng.permutation(len(files[c]))
            n_test = min(len(order) - 1, int(round(float(test_fraction) * len(order))))
            test += [(files[c][j], label) for j in order[:n_test]]
            train += [(files[c][j], label) for j in order[n_test:]]
        if not test:
            raise DataError(
                f"data.test_fraction={test_fraction} leaves no test images in {root} (too few images per class); "
                f"raise it, or give the folder train/ and test/ subfolders"
            )
    train = [train[j] for j in rng.permutation(len(train))]
    test = [test[j] for j in rng.permutation(len(test))]

    settings = {
        "version": CACHE_VERSION,
        "layout": layout,
        "image_size": int(image_size),
        "resize": str(resize),
        "test_fraction": float(test_fraction) if layout == "split" else None,
        "split_seed": int(split_seed),
    }
    listing = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for part, items in (("train", train), ("test", test)):
        for rel, label in items:
            st = (root / rel).stat()
            listing.update(f"{part}\0{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{label}\n".encode())
    stem = hashlib.sha256(json.dumps({"root": str(root), **settings}, sort_keys=True).encode()).hexdigest()
    return FolderPlan(
        root, layout, classes, train, test, int(image_size), str(resize), listing.hexdigest(), stem, ignored
    )


def _class_files(root: Path, tree: Path) -> tuple[dict[str, list[str]], int]:
    """``{class: [image paths relative to root, sorted]}`` below ``tree``, and how many other files were left out.

    torchvision's own scan (``find_classes``, ``make_dataset``: class folders sorted, files found
    recursively, symbolic links followed), with hidden class folders, hidden files and whatever lies
    below a hidden folder left out, and a one-line error for a tree without classes or a class without images.
    """
    from torchvision.datasets.folder import find_classes, has_file_allowed_extension, make_dataset

    where = tree.relative_to(root).as_posix()
    try:
        classes = [c for c in find_classes(tree)[0] if not c.startswith(".")]
    except FileNotFoundError:  # no folder at all
        classes = []
    if not classes:
        raise DataError(
            f"data.path={root}: {'the folder' if where == '.' else where + '/'} has no class folders "
            f"(expected <class>/<images>, or train/<class>/... with test/<class>/...)"
        )
    ignored = sum(1 for f in tree.iterdir() if f.is_file())

    def is_image(path: str) -> bool:
        nonlocal ignored
        parts = Path(path).relative_to(tree).parts  # class, subfolders..., file name
        if any(part.startswith(".") for part in parts[1:-1]):  # below a hidden folder: not looked at
            return False
        if has_file_allowed_extension(path, IMAGE_EXTENSIONS) and not parts[-1].startswith("."):
            return True
        ignored += 1
        return False

    index = {c: i for i, c in enumerate(classes)}
    files: dict[str, list[str]] = {c: [] for c in classes}
    for path, label in make_dataset(tree, index, is_valid_file=is_image, allow_empty=True):
        files[classes[label]].append(Path(path).relative_to(root).as_posix())
    for c, found in files.items():
        if not found:
            raise DataError(
                f"data.path={root}: the class folder {(tree / c).relative_to(root).as_posix()}/ has no images "
                f"({' '.join(IMAGE_EXTENSIONS)}); add some or remove the folder"
            )
    return files, ignored


def decode_image(path: str | Path, size: int, resize: str = "stretch") -> np.ndarray:
    """One image file as a (3, size, size) uint8 array: any PIL format and mode, EXIF-rotated, resized
    whole (``stretch``) or with its shorter side to ``size`` and the centre cut out (``crop``)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when the file is much larger
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I", "F") or im.mode.startswith("I;16"):  # 16-bit and float gray: to 8 bits
            scale = 1 / 257 if im.mode.startswith("I;16") or np.asarray(im).max() > 255 else 1
            im = Image.fromarray(np.clip(np.asarray(im, dtype=np.float32) * scale, 0, 255).astype(np.uint8))
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        im = im.convert("RGB")
        if resize == "crop":
            im = ImageOps.fit(im, (size, size), Image.Resampling.BILINEAR)
        elif im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def load_image_folder(
    plan: FolderPlan, cache_dir: str | Path, bad_images: str = "skip", workers: int | None = None
) -> Dataset:
    """The whole folder as CPU uint8 tensors: from the cache file when the folder is unchanged, else
    decoded (in ``workers`` threads, with a progress bar on a terminal) and cached for the next run.

    The normalization statistics are those of all the folder's training images (before
    ``train_limit`` and ``val_split``), computed once and cached with them. Unreadable image files
    are left out with a logged count (``bad_images=skip``) or stop with a one-line error (``error``).
    """
    file = plan.cache_file(cache_dir)
    arrays = _read_cache(file, plan.key)
    if arrays is None:
        arrays = _decode_folder(plan, workers)
        _check_readable(plan, arrays, bad_images)
        arrays["mean"], arrays["std"] = (np.asarray(s) for s in channel_stats(torch.from_numpy(arrays["train_images"])))
        try:
            _write_cache(file, arrays)
            state = f"decoded and cached: {file} ({format_bytes(file.stat().st_size)})"
        except OSError as err:  # a read-only or full disk: train anyway, decode again next time
            log.warning(f"could not write the cache file {file} ({err}); the next run decodes the folder again")
            state, file = "decoded (not cached)", None
    else:
        _check_readable(plan, arrays, bad_images)
        state = f"read from the cache: {file} ({format_bytes(file.stat().st_size)})"
    train = Split(torch.from_numpy(arrays["train_images"]), torch.from_numpy(arrays["train_labels"]))
    test = Split(torch.from_numpy(arrays["test_images"]), torch.from_numpy(arrays["test_labels"]))
    log.info(
        f"image folder {plan.root} ({plan.layout}): {len(train)} train, {len(test)} test images, "
        f"{len(plan.classes)} classes, {plan.image_size}x{plan.image_size}; {state}"
        + (f"; {plan.ignored} files that are not images ignored" if plan.ignored else "")
    )
    return Dataset(
        train,
        test,
        None,
        plan.classes,
        name="image_folder",
        source=str(plan.root),
        mean=tuple(float(v) for v in arrays["mean"]),
        std=tuple(float(v) for v in arrays["std"]),
        fingerprint=plan.key,
        cache=str(file or ""),
        skipped=tuple(str(s) for s in arrays["skipped"]),
    )


def _decode_folder(plan: FolderPlan, workers: int | None) -> dict[str, np.ndarray]:
    from tqdm.contrib.concurrent import thread_map

    s, n = plan.image_size, len(plan.train) + len(plan.test)
    parts = {"train": plan.train, "test": plan.test}
    images = {part: np.empty((len(items), 3, s, s), dtype=np.uint8) for part, items in parts.items()}
    jobs = [(part, i, rel) for part, items in parts.items() for i, (rel, _) in enumerate(items)]
    workers = workers or min(8, os.cpu_count() or 1)
    errors: dict[tuple[str, int], str] = {}

    def decode(job) -> None:
        part, i, rel = job
        try:
            images[part][i] = decode_image(plan.root / rel, s, plan.resize)
        except Exception as err:  # any file PIL cannot read: a truncated, corrupt or mislabelled image
            text = str(err).strip().splitlines()
            errors[part, i] = f"{rel}: {type(err).__name__}: {text[0] if text else ''}".rstrip(": ")

    log.info(
        f"decoding {n} images of {plan.root} to {s}x{s} ({plan.resize}) in {workers} threads "
        f"(first use of this folder; later runs read the cache)"
    )
    quiet = True if n < PROGRESS_MIN_IMAGES else None  # None: tqdm shows it on a terminal only
    thread_map(decode, jobs, max_workers=workers, unit="img", desc="decoding", disable=quiet)
    arrays, skipped = {}, []
    for part, items in parts.items():
        keep = np.asarray([(part, i) not in errors for i in range(len(items))], dtype=bool)
        skipped += [errors[part, i] for i in range(len(items)) if (part, i) in errors]
        arrays[f"{part}_images"] = images[part][keep] if not keep.all() else images[part]
        arrays[f"{part}_labels"] = np.asarray([label for (_, label), k in zip(items, keep) if k], dtype=np.int64)
        arrays[f"{part}_files"] = np.asarray([rel for (rel, _), k in zip(items, keep) if k], dtype=str)
    arrays["skipped"] = np.asarray(skipped, dtype=str)
    arrays["classes"] = np.asarray(plan.classes, dtype=str)
    arrays["key"] = np.asarray(plan.key)
    return arrays


def _check_readable(plan: FolderPlan, arrays: dict, bad_images: str) -> None:
    """The unreadable files: an error, or a warning with their count; a class or split left empty is an error."""
    skipped = [str(s) for s in arrays["skipped"]]
    if skipped:
        total = len(plan.train) + len(plan.test)
        if bad_images == "error":
            raise DataError(
                f"data.path={plan.root}: {len(skipped)} of {total} image files cannot be read, e.g. {skipped[0]} "
                f"(fix or remove them, or set data.bad_images=skip to leave them out)"
            )
        log.warning(
            f"data.bad_images=skip: left out {len(skipped)} of {total} unreadable image files, e.g. {skipped[0]}"
        )
    counts = np.bincount(arrays["train_labels"], minlength=len(plan.classes))
    empty = [c for c, k in zip(plan.classes, counts) if not k]
    if empty:
        raise DataError(f"data.path={plan.root}: no readable training images of class {', '.join(empty)}")
    if not len(arrays["test_labels"]):
        raise DataError(f"data.path={plan.root}: no readable test images")


def _read_cache(file: Path, key: str) -> dict[str, np.ndarray] | None:
    """The cache file's arrays if it holds this key; None (and the folder decoded again) otherwise."""
    if not file.is_file():
        return None
    try:
        with np.load(file, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if str(arrays["key"]) != key:
            return None
        return arrays
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as err:
        log.warning(f"ignoring the unreadable cache file {file} ({type(err).__name__}: {err}); decoding again")
        return None


def _write_cache(file: Path, arrays: dict[str, np.ndarray]) -> None:
    """Atomically (a temporary file, then a rename); older cache files of the same folder and settings go."""
    with atomic_write(file) as f:
        np.savez(f, **arrays)
    stem = file.name.rsplit("-", 1)[0]
    for old in file.parent.glob(f"{stem}-*.npz"):
        if old != file:
            old.unlink(missing_ok=True)
            log.info(f"removed the outdated cache file {old}")


