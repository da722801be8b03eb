"""The on-device loader: a split lives on the training device; shuffling, the baseline's augmentation
(pad, random crop, flip) and normalization are done there in batches, not per image on the CPU."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sweeplab.data.dataset import Split


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

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` images and labels as this loader serves a batch (augmented, normalized, in its
        memory format), drawn from a generator of their own: the loader's epochs are not touched."""
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.seed)
        idx = torch.arange(min(n, len(self.labels)), device=self.device)
        x = self.augment(self.images, idx, self.size, gen) if self.augment else self.images[idx]
        return self.normalize(x), self.labels[idx]

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
