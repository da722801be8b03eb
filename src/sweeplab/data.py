"""The data sets (CIFAR-10 and CIFAR-100 from torchvision or a local npz; a folder of your own images,
decoded once and cached), kept as uint8 tensors on the training device, with batched
crop/flip/normalize done there instead of a per-image PIL pipeline."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sweeplab.errors import ConfigError

log = logging.getLogger(__name__)

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
    # Normalization on [0, 1] pixels: the config's, else the data's own (build.load_data fills them).
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
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(
            f"{kind.title} is not in {root} and could not be downloaded ({reason}); "
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
    if name not in CIFAR:
        raise DataError(f"data.name={name!r} is not one of {', '.join(CIFAR)} (or image_folder)")
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


# -- your own images: a folder of class folders -----------------------------------------------------
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TEST_DIRS = ("test", "val")  # below the root, beside train/: the first one present is the test split
RESIZE_MODES = ("stretch", "crop")
BAD_IMAGES = ("skip", "error")
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
    ``test_limit`` and ``val_split`` take images of every class.
    """
    if path is None or not str(path).strip():
        raise DataError("data.path is not set: data=image_folder needs data.path=<a folder of class folders>")
    if resize not in RESIZE_MODES:
        raise DataError(f"data.resize={resize!r} must be one of {', '.join(RESIZE_MODES)}")
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
        if not 0.0 < float(test_fraction) < 1.0:
            raise DataError(f"data.test_fraction={test_fraction} must lie in (0, 1) to split one tree of images")
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
    """``{class: [image paths relative to root, sorted]}`` below ``tree``, and how many other files were left out."""
    where = tree.relative_to(root).as_posix()
    classes = sorted(d.name for d in tree.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(
            f"data.path={root}: {'the folder' if where == '.' else where + '/'} has no class folders "
            f"(expected <class>/<images>, or train/<class>/... with test/<class>/...)"
        )
    files, ignored = {}, sum(1 for f in tree.iterdir() if f.is_file())
    for c in classes:
        found = []
        for dirpath, dirnames, filenames in os.walk(tree / c, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                    found.append((Path(dirpath) / name).relative_to(root).as_posix())
                else:
                    ignored += 1
        if not found:
            raise DataError(
                f"data.path={root}: the class folder {(tree / c).relative_to(root).as_posix()}/ has no images "
                f"({' '.join(IMAGE_EXTENSIONS)}); add some or remove the folder"
            )
        files[c] = found
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
    if bad_images not in BAD_IMAGES:
        raise DataError(f"data.bad_images={bad_images!r} must be one of {', '.join(BAD_IMAGES)}")
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
    from tqdm.auto import tqdm

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
    with ThreadPoolExecutor(workers) as pool, tqdm(total=n, unit="img", desc="decoding", disable=quiet) as bar:
        for _ in pool.map(decode, jobs):
            bar.update()
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
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.stem}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    stem = file.name.rsplit("-", 1)[0]
    for old in file.parent.glob(f"{stem}-*.npz"):
        if old != file:
            old.unlink(missing_ok=True)
            log.info(f"removed the outdated cache file {old}")


# -- does it fit on the device -----------------------------------------------------------------------
def device_bytes(n_train: int, n_test: int, n_val: int, image_size: int, crop_padding: int = 0) -> int:
    """Bytes of uint8 data a run keeps on its device (DeviceLoader): every split once, plus the
    training split's padded copy and the augmented copy each epoch makes."""
    pixels = 3 * image_size * image_size
    padded = 3 * (image_size + 2 * crop_padding) ** 2 if crop_padding else 0
    return (n_train + n_test + n_val) * pixels + n_train * (padded + pixels)


def free_memory(device: torch.device) -> int | None:
    """Free bytes on ``device``: CUDA's free memory, the host's available RAM for the CPU; None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            import psutil
        except ImportError:
            return None
        return int(psutil.virtual_memory().available)
    return None


def check_fits(needed: int, device: torch.device, hint: str) -> None:
    """A one-line DataError when ``needed`` bytes exceed the device's free memory; ``hint`` says what to change."""
    free = free_memory(device)
    if free is not None and needed > free:
        raise DataError(
            f"the data needs about {format_bytes(needed)} on {device} but only {format_bytes(free)} is free: {hint}"
        )


def format_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


# -- a data config as a Dataset ---------------------------------------------------------------------
def from_config(data, device: torch.device | None = None, crop_padding: int = 0) -> Dataset:
    """``cfg.data`` (any mapping with its keys) as a Dataset: CIFAR-10/100 or an image folder
    (``data.name``), limited, with the config's mean/std or, where they are null, the data's own.

    With ``device``, a data set that does not fit there (with the training split's padded and
    augmented copies, ``crop_padding``) is a one-line DataError; an image folder is checked from its
    listing, before anything is decoded.
    """
    name = data.get("name", "cifar10")
    train_limit, test_limit, val_split = data.train_limit, data.test_limit, data.val_split
    if name == "image_folder":
        plan = scan_image_folder(data.path, data.image_size, data.resize, data.test_fraction, data.split_seed)
        if device is not None:
            n_train, n_test = len(plan.train[:train_limit]), len(plan.test[:test_limit])
            needed = device_bytes(n_train, n_test, 0, plan.image_size, crop_padding)
            check_fits(needed, device, f"lower data.image_size={plan.image_size}, or set data.train_limit/test_limit")
        full = load_image_folder(plan, data.cache_dir, data.bad_images, data.get("workers"))
        train, test, val = limit(full.train, full.test, train_limit, test_limit, val_split)
        dataset = dataclasses.replace(full, train=train, test=test, val=val)
    else:
        dataset = load_dataset(data.root, data.npz, data.download, train_limit, test_limit, val_split, name=name)
        if device is not None:
            sizes = len(dataset.train), len(dataset.test), len(dataset.val) if dataset.val is not None else 0
            check_fits(
                device_bytes(*sizes, dataset.image_size, crop_padding), device, "set data.train_limit/test_limit"
            )
    if data.num_classes is not None and int(data.num_classes) != dataset.num_classes:
        raise DataError(f"data.num_classes={data.num_classes} but {dataset.source} has {dataset.num_classes} classes")
    if data.mean is not None:
        dataset.mean, dataset.std = tuple(float(v) for v in data.mean), tuple(float(v) for v in data.std)
    elif dataset.mean is None:
        dataset.mean, dataset.std = channel_stats(dataset.train.images)
    return dataset


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
