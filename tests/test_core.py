"""The model, the batched augmentation, data loading and the engine, in-process on small data."""

import numpy as np
import pytest
import torch

from sweeplab.data import Augment, DataError, DeviceLoader, Split, load_dataset
from sweeplab.engine import Trainer, seed_everything
from sweeplab.models import resnet18

from support import write_npz

CPU = torch.device("cpu")


def test_resnet18_shape_and_parameter_count():
    model = resnet18()
    assert sum(p.numel() for p in model.parameters()) == 11_173_962  # ResNet-18, CIFAR variant
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)  # 3x3 stem, no max-pool
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert resnet18(num_classes=7, width=8)(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def _images(n=64):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_flip_really_flips_about_half():
    images = _images()
    aug = Augment(crop_padding=0, flip=True)
    out = aug(aug.pad(images), torch.arange(64), 32, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.uint8
    same = (out == images).flatten(1).all(1)
    mirrored = (out == images.flip(3)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 10 < int(mirrored.sum()) < 54


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_crop_is_a_window_of_the_padded_image(mode):
    images = _images(16)
    aug = Augment(crop_padding=2, pad_mode=mode, flip=False)
    padded = aug.pad(images)
    assert padded.shape == (16, 3, 36, 36)  # pad to 36
    out = aug(padded, torch.arange(16), 32, torch.Generator().manual_seed(2))
    offsets = set()
    for i in range(16):
        found = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(out[i], padded[i, :, dy : dy + 32, dx : dx + 32])
        ]
        assert found, "every crop is a 32x32 window inside the padding"
        offsets.add(found[0])
    assert len(offsets) > 3  # the offsets are random


def test_loader_normalizes_and_covers_every_image_once():
    split = Split(_images(100), torch.arange(100) % 10)
    loader = DeviceLoader(split, 32, CPU, mean=[0.5] * 3, std=[0.25] * 3, shuffle=True, seed=3)
    xs, ys = zip(*loader)
    assert len(loader) == 4 and [len(y) for y in ys] == [32, 32, 32, 4]
    assert sorted(torch.cat(ys).tolist()) == sorted(split.labels.tolist())
    x = torch.cat(xs)
    assert x.dtype == torch.float32 and abs(x.mean().item()) < 0.1  # (u/255 - 0.5) / 0.25 is centred
    loader.set_epoch(1)
    assert not torch.equal(torch.cat([y for _, y in loader]), torch.cat(ys))  # a new order each epoch


def test_load_npz_with_limits_and_validation_split(tmp_path):
    path = write_npz(tmp_path / "d.npz", n_train=120, n_test=40)
    data = load_dataset(tmp_path, path, train_limit=100, test_limit=30, val_split=20)
    assert (len(data.train), len(data.val), len(data.test)) == (80, 20, 30)
    assert data.train.images.shape == (80, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert data.classes[0] == "airplane"
    assert data.train.checksum() != data.val.checksum()


def test_missing_and_malformed_data_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path, tmp_path / "nope.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="not a readable npz"):
        load_dataset(tmp_path, tmp_path / "bad.npz")
    np.savez(tmp_path / "partial.npz", train_images=np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match="lacks the arrays"):
        load_dataset(tmp_path, tmp_path / "partial.npz")
    with pytest.raises(DataError) as err:  # offline, nothing downloaded: both ways out are named
        load_dataset(tmp_path / "empty", None, download=False)
    assert "data.npz" in str(err.value) and "internet" in str(err.value) and "\n" not in str(err.value)


def test_engine_lowers_the_loss_and_checkpoints(tmp_path, tiny_npz):
    seed_everything(0)
    data = load_dataset(tmp_path, tiny_npz)
    common = dict(device=CPU, mean=[0.5] * 3, std=[0.25] * 3)
    train = DeviceLoader(data.train, 50, shuffle=True, augment=Augment(2, "reflect", True), **common)
    test = DeviceLoader(data.test, 200, **common)
    model = resnet18(width=4)
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        train,
        test,
        device=CPU,
        checkpoint_dir=tmp_path / "ck",
        target_acc=0.15,
    )
    history = trainer.fit(4)
    assert [m["epoch"] for m in history] == [1, 2, 3, 4]
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]
    assert history[-1]["test_acc"] > 0.2  # chance is 0.1
    summary = trainer.summary()
    assert summary["best_test_acc"] == max(m["test_acc"] for m in history)
    reached = next(m["epoch"] for m in history if m["test_acc"] >= 0.15)  # exists: the last epoch is > 0.2
    assert summary["epochs_to_target"] == reached
    assert summary["train_time_to_target"] == sum(m["epoch_time"] for m in history[:reached])
    assert (tmp_path / "ck" / "last.pt").is_file() and (tmp_path / "ck" / "best.pt").is_file()
