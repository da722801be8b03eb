"""A peer side by side: the baseline recipe the way the seed and most users train it, against sweeplab's
engine, on the same device in one run, epoch by epoch in turn (so a burst of load elsewhere slows both).

    python benchmarks/peer.py --npz cifar10.npz                     # the whole data set, 3 epochs each
    python benchmarks/peer.py --npz cifar10.npz --device cpu --images 300 --test-images 200 --width 4 \\
        --epochs 1 --workers 0                                      # a rehearsal at toy size

The peer: CIFAR-10 as torchvision's ``CIFAR10`` dataset serves it (a PIL image per item, read here from
the npz copy instead of the downloaded batches), a ``DataLoader`` (batch 128, shuffled, ``--workers``
processes, pinned memory on CUDA) with ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``,
``ToTensor`` and ``Normalize``, and a plain PyTorch loop in fp32 that reads the loss and the accuracy
every step, as the well-known CIFAR training scripts do. sweeplab: ``experiment=baseline`` as train.py
composes it (the data on the device, augmented there; bf16 autocast, channels_last and the CUDA graph
on CUDA), through ``Trainer.fit``, without MLflow. Both train the same ResNet-18 (CIFAR variant) with
SGD (lr 0.01, momentum 0.9) at batch 128. Printed: each side's training seconds per epoch and images
per second (the median of the epochs after the first, which holds warm-up), their ratio, and the test
accuracy each reached.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def npz_cifar10(path: str, train: bool, limit: int | None, transform):
    """torchvision's CIFAR10 dataset over the arrays of an npz copy: the same HWC uint8 ``data``, the
    same ``targets``, the same ``__getitem__`` (``Image.fromarray``, then the transform)."""
    from PIL import Image
    from torchvision.datasets import VisionDataset

    class NpzCIFAR10(VisionDataset):
        def __init__(self):
            super().__init__(str(Path(path).parent), transform=transform)
            part = "train" if train else "test"
            with np.load(path) as z:
                self.data = z[f"{part}_images"][:limit]
                self.targets = z[f"{part}_labels"][:limit].tolist()

        def __len__(self):
            return len(self.data)

        def __getitem__(self, index):
            img, target = Image.fromarray(self.data[index]), self.targets[index]
            return self.transform(img), target

    return NpzCIFAR10()


class Peer:
    """The plain loop: DataLoader batches copied to the device, forward, loss, backward, step."""

    def __init__(self, args, device: torch.device):
        from torch.utils.data import DataLoader
        from torchvision import transforms

        from sweeplab.models import resnet18

        train_tf = transforms.Compose(
            [
                transforms.RandomCrop(32, padding=4),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(MEAN, STD),
            ]
        )
        test_tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
        pin = device.type == "cuda"
        self.train = DataLoader(
            npz_cifar10(args.npz, True, args.images, train_tf),
            batch_size=128,
            shuffle=True,
            num_workers=args.workers,
            pin_memory=pin,
            persistent_workers=args.workers > 0,
        )
        self.test = DataLoader(npz_cifar10(args.npz, False, args.test_images, test_tf), batch_size=1000)
        torch.manual_seed(1)
        self.device, self.model = device, resnet18(width=args.width).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)

    def epoch(self) -> float:
        """One training epoch; its seconds."""
        self.model.train()
        start = time.perf_counter()
        train_loss = correct = total = 0
        for inputs, targets in self.train:
            inputs, targets = inputs.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)
            self.optimizer.zero_grad()
            outputs = self.model(inputs)
            loss = F.cross_entropy(outputs, targets)
            loss.backward()
            self.optimizer.step()
            train_loss += loss.item()  # the usual running figures: a wait for the device every step
            correct += outputs.argmax(1).eq(targets).sum().item()
            total += targets.size(0)
        return time.perf_counter() - start

    @torch.no_grad()
    def accuracy(self) -> float:
        self.model.eval()
        correct = total = 0
        for inputs, targets in self.test:
            outputs = self.model(inputs.to(self.device))
            correct += outputs.argmax(1).eq(targets.to(self.device)).sum().item()
            total += targets.size(0)
        return correct / total


def sweeplab_trainer(args, device: torch.device):
    """experiment=baseline as train.py composes it, built by sweeplab.build, without MLflow."""
    from hydra import compose, initialize_config_dir

    from sweeplab import build
    from sweeplab.checks import check_run
    from sweeplab.engine import seed_everything

    overrides = [
        "experiment=baseline",
        f"trainer.device={device}",
        "trainer.progress=false",
        f"data.npz={Path(args.npz).resolve()}",
        f"data.train_limit={args.images or 'null'}",
        f"data.test_limit={args.test_images or 'null'}",
        f"model.width={args.width}",
        *args.override,
    ]
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = compose("train", overrides=overrides)
    check_run(cfg)
    data = build.load_data(cfg)
    seed_everything(cfg.trainer.seed, cfg.trainer.deterministic)
    trainer = build.build_trainer(cfg, device, data)
    how = (
        f"precision {build.precision_of(cfg, device)}, channels_last {build.channels_last_of(cfg, device)}, "
        f"CUDA graph {'on' if trainer.graph_step is not None else 'off'}"
    )
    return trainer, how


def steady(seconds: list[float]) -> float:
    """The median epoch after the first (warm-up, cuDNN's choices, the graph's capture); the one epoch if alone."""
    return statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--npz", required=True, help="a copy of CIFAR-10 in the cifar10.npz layout")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--epochs", type=int, default=3, help="training epochs of each side")
    p.add_argument("--images", type=int, help="training images (default: all)")
    p.add_argument("--test-images", type=int, help="test images (default: all)")
    p.add_argument("--width", type=int, default=64, help="ResNet-18 width (64: the real one)")
    p.add_argument("--workers", type=int, default=2, help="the peer's DataLoader worker processes")
    p.add_argument("--override", nargs="*", default=[], help="more Hydra overrides for sweeplab's side")
    args = p.parse_args()
    device = torch.device(args.device)
    peer = Peer(args, device)
    trainer, how = sweeplab_trainer(args, device)
    n = len(peer.train.dataset)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(
        f"peer benchmark: {device} ({where}), torch {torch.__version__}, {n:,} training images, "
        f"ResNet-18 width {args.width}, batch 128, SGD lr 0.01 momentum 0.9, {args.epochs} epoch(s) each"
    )
    peer_s, ours_s = [], []
    for epoch in range(1, args.epochs + 1):  # in turn, so that load from elsewhere slows both sides
        peer_s.append(peer.epoch())
        ours_s.append(trainer.fit(epoch)[-1]["epoch_time"])
    peer_name = f"peer (torchvision CIFAR10, DataLoader with PIL transforms, {args.workers} workers, plain loop, fp32)"
    sides = (
        (peer_name, peer_s, peer.accuracy()),
        (f"sweeplab (experiment=baseline: data on the device, {how})", ours_s, trainer.history[-1]["test_acc"]),
    )
    for name, seconds, acc in sides:
        each = " ".join(f"{s:.2f}" for s in seconds)
        print(
            f"{name}: {steady(seconds):.2f} s/epoch, {n / steady(seconds):,.0f} img/s "
            f"(epochs: {each} s); test accuracy {100 * acc:.2f}%"
        )
    ratio = steady(peer_s) / steady(ours_s)
    print(
        f"ratio: sweeplab {n / steady(ours_s):,.0f} img/s vs peer {n / steady(peer_s):,.0f} img/s, "
        f"{steady(ours_s):.2f} vs {steady(peer_s):.2f} s/epoch -> {ratio:.2f}x the peer's speed"
    )


if __name__ == "__main__":
    main()
