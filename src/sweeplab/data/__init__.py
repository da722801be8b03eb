"""The data sets (CIFAR-10 and CIFAR-100 from torchvision or a local npz; a folder of your own images,
decoded once and cached), kept as uint8 tensors on the training device, with batched
crop/flip/normalize done there instead of a per-image PIL pipeline.

One module per job: ``dataset`` (the Split and Dataset records), ``cifar`` and ``image_folder`` (the
sources), ``memory`` (does it fit on the device), ``loader`` (the on-device loader and augmentation)
and ``config`` (a data config as a Dataset: the entry the rest of the project uses)."""

from sweeplab.data.cifar import CIFAR, CIFAR10_CLASSES, CIFAR100_CLASSES, NPZ_ENV, load_dataset
from sweeplab.data.config import from_config
from sweeplab.data.dataset import DataError, Dataset, Split, channel_stats, limit
from sweeplab.data.image_folder import FolderPlan, decode_image, load_image_folder, scan_image_folder
from sweeplab.data.loader import Augment, DeviceLoader
from sweeplab.data.memory import card_free, check_fits, device_bytes, format_bytes, free_memory

__all__ = [
    "CIFAR",
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "NPZ_ENV",
    "Augment",
    "DataError",
    "Dataset",
    "DeviceLoader",
    "FolderPlan",
    "Split",
    "card_free",
    "channel_stats",
    "check_fits",
    "decode_image",
    "device_bytes",
    "format_bytes",
    "free_memory",
    "from_config",
    "limit",
    "load_dataset",
    "load_image_folder",
    "scan_image_folder",
]
