"""Does a data set fit on the training device: the bytes it needs there and what is free."""

from __future__ import annotations

import torch

from sweeplab.data.dataset import DataError


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


def card_free(index: int) -> int:
    """Free bytes on CUDA card ``index``, read through NVML where it is installed: the sweep's own
    process asks before its jobs start, and should not hold a CUDA context on each card all the while."""
    try:
        used = torch.cuda.device_memory_used(index)  # NVML (pynvml), with CUDA_VISIBLE_DEVICES' numbering
    except Exception:  # no NVML: the CUDA runtime's figure
        return int(torch.cuda.mem_get_info(index)[0])
    return int(torch.cuda.get_device_properties(index).total_memory - used)


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


