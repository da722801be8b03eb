"""A data config (``cfg.data``) as a Dataset: the one entry the rest of the project loads data through."""

from __future__ import annotations

import dataclasses

import torch

from sweeplab.data.cifar import load_dataset
from sweeplab.data.dataset import DataError, Dataset, channel_stats, limit
from sweeplab.data.image_folder import load_image_folder, scan_image_folder
from sweeplab.data.memory import check_fits, device_bytes


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


