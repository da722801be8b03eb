"""data=image_folder and data=cifar100: folder layouts, decoding, the cache, normalization, every
one-line error, and one in-process training run composed through Hydra. The folders are built here:
a few classes of generated PNG and JPEG images of different sizes."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from sweeplab import build, data
from sweeplab.checks import check_run
from sweeplab.data import CIFAR100_CLASSES, DataError, channel_stats, scan_image_folder
from sweeplab.errors import ConfigError

from images import CLASSES, draw, make_folder, write_images
from support import ROOT


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("images") / "shapes")


def data_cfg(path, cache, **values):
    """conf/data/image_folder.yaml as train.py composes it, with ``values`` set."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "data=image_folder",
                f"data.path={path}",
                f"data.cache_dir={cache}",
                "trainer.device=cpu",
                "trainer.batch_size=4",
            ],
        )
    for key, value in values.items():
        OmegaConf.update(cfg, key, value)
    return cfg


class Decodes:
    """Counts the images decoded (the cache hit check)."""

    def __init__(self, monkeypatch):
        self.count = 0
        real = data.decode_image

        def counting(*args, **kwargs):
            self.count += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(data.image_folder, "decode_image", counting)


# -- layouts ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["train/test", "train/val", "split"])
def test_layouts_give_both_splits_with_the_class_folders_as_classes(tmp_path, layout):
    root = make_folder(tmp_path / "imgs", layout, n_train=8, n_test=3)
    ds = build.load_data(data_cfg(root, tmp_path / "cache", **{"data.image_size": 24}))
    assert ds.classes == CLASSES and ds.num_classes == 3
    assert ds.name == "image_folder" and ds.source == str(root.resolve())
    # split: 11 images per class, round(0.2 * 11) = 2 of each for testing
    assert (len(ds.train), len(ds.test)) == ((27, 6) if layout == "split" else (24, 9))
    for split in (ds.train, ds.test):
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (3, 24, 24)
        assert split.labels.dtype == torch.int64 and set(split.labels.tolist()) == {0, 1, 2}
    # shuffled, so that train_limit takes every class
    assert set(ds.train.labels[:12].tolist()) == {0, 1, 2}


def test_single_tree_split_is_seeded_and_stratified(tmp_path):
    root = make_folder(tmp_path / "imgs", "split", n_train=16, n_test=4)  # 20 images per class
    plan = scan_image_folder(root, 16, test_fraction=0.25, split_seed=3)
    assert plan.layout == "split" and len(plan.test) == 15 and len(plan.train) == 45
    assert np.bincount([label for _, label in plan.test]).tolist() == [5, 5, 5]
    assert scan_image_folder(root, 16, test_fraction=0.25, split_seed=3).test == plan.test
    other = scan_image_folder(root, 16, test_fraction=0.25, split_seed=4)
    assert {f for f, _ in other.test} != {f for f, _ in plan.test}
    assert not {f for f, _ in plan.test} & {f for f, _ in plan.train}
    assert other.key != plan.key  # the split is part of the cache key


def test_files_are_found_recursively_by_extension_and_hidden_ones_are_left_out(tmp_path):
    """Below each class folder, any depth, any case of an image extension, symbolic links followed; other
    files and hidden files count as ignored; hidden folders (and hidden class folders) are not looked into."""
    root = make_folder(tmp_path / "imgs", n_train=2, n_test=1)
    nested = root / "train" / "disc" / "more" / "deeper"
    write_images(nested, 1, 2, np.random.default_rng(1))
    (nested / "000.png").rename(nested / "UPPER.PNG")
    write_images(tmp_path / "elsewhere", 2, 1, np.random.default_rng(2))
    (root / "train" / "square" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "train" / "disc" / "notes.txt").write_text("not an image")
    (root / "train" / "disc" / ".hidden.png").write_bytes((nested / "UPPER.PNG").read_bytes())
    write_images(root / "train" / "disc" / ".thumbnails", 1, 3, np.random.default_rng(3))
    write_images(root / "train" / ".ipynb_checkpoints", 0, 2, np.random.default_rng(4))
    (root / "train" / "README.txt").write_text("a file beside the class folders")
    plan = scan_image_folder(root, 16)
    assert plan.classes == CLASSES
    train = {path: CLASSES[label] for path, label in plan.train}
    assert train == {
        **{f"train/{c}/{f}": c for c in CLASSES for f in ("000.png", "001.jpg")},
        "train/disc/more/deeper/UPPER.PNG": "disc",
        "train/disc/more/deeper/001.jpg": "disc",
        "train/square/linked/000.png": "square",
    }
    assert plan.ignored == 3  # notes.txt, .hidden.png and README.txt; nothing below hidden folders


def test_png_and_jpeg_of_any_size_and_mode_decode_to_the_square(tmp_path):
    rng = np.random.default_rng(0)
    img = draw(0, (50, 30), rng)
    Image.fromarray(img).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(img).convert("RGBA").save(tmp_path / "b.png")
    Image.fromarray(img).convert("P").save(tmp_path / "c.png")
    Image.fromarray(img[..., 0].astype(np.uint16) * 257).save(tmp_path / "d.png")  # 16-bit grayscale
    for name in ("a.jpg", "b.png", "c.png", "d.png"):
        for mode in ("stretch", "crop"):
            out = data.decode_image(tmp_path / name, 16, mode)
            assert out.shape == (3, 16, 16) and out.dtype == np.uint8, (name, mode)
    stretched = data.decode_image(tmp_path / "b.png", 30, "stretch")
    assert stretched.shape == (3, 30, 30)
    exact = np.asarray(Image.fromarray(img).resize((30, 30), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert np.array_equal(stretched, exact)
    cropped = data.decode_image(tmp_path / "b.png", 30, "crop")  # 50x30 -> the centre 30x30, unscaled
    assert np.array_equal(cropped, img[:, 10:40].transpose(2, 0, 1))


# -- the cache and the statistics -----------------------------------------------------------------------
def test_second_load_reads_the_cache_and_a_changed_folder_rebuilds_it(tmp_path, monkeypatch, caplog):
    root = make_folder(tmp_path / "imgs", n_train=6, n_test=2)
    cache = tmp_path / "cache"
    cfg = data_cfg(root, cache, **{"data.image_size": 16})
    decodes = Decodes(monkeypatch)
    with caplog.at_level(logging.INFO, logger="sweeplab.data"):
        first = build.load_data(cfg)
    assert decodes.count == 24
    files = list(cache.glob("image_folder-*.npz"))
    assert len(files) == 1 and first.cache == str(files[0]) and len(first.fingerprint) == 64
    assert f"decoded and cached: {files[0]}" in caplog.text and "KiB" in caplog.text  # location and size logged

    second = build.load_data(cfg)
    assert decodes.count == 24  # nothing decoded again
    assert torch.equal(second.train.images, first.train.images) and second.mean == first.mean
    assert second.train.checksum() == first.train.checksum()

    new = root / "train" / "disc" / "new.png"
    Image.fromarray(draw(1, (40, 40), np.random.default_rng(1))).save(new)
    third = build.load_data(cfg)
    assert decodes.count == 24 + 25 and len(third.train) == len(first.train) + 1
    assert third.fingerprint != first.fingerprint
    assert [p.name for p in cache.glob("image_folder-*.npz")] == [os.path.basename(third.cache)]  # old one gone

    os.utime(new, ns=(new.stat().st_atime_ns, new.stat().st_mtime_ns + 10**9))  # touched: decoded again
    build.load_data(cfg)
    assert decodes.count == 2 * 25 + 24
    build.load_data(data_cfg(root, cache, **{"data.image_size": 20}))
    assert decodes.count == 3 * 25 + 24  # another size is another cache file
    assert len(list(cache.glob("image_folder-*.npz"))) == 2


def test_normalization_comes_from_the_training_images_unless_the_config_sets_it(tmp_path, folder):
    cfg = data_cfg(folder, tmp_path / "cache", **{"data.image_size": 16, "data.train_limit": 10})
    ds = build.load_data(cfg)
    full = data.load_image_folder(scan_image_folder(folder, 16), tmp_path / "cache")
    assert ds.mean == full.mean and ds.std == full.std  # all the folder's training images, before train_limit
    assert np.allclose(ds.mean, channel_stats(full.train.images)[0])
    x = full.train.images.double() / 255
    assert np.allclose(ds.mean, x.mean((0, 2, 3)), atol=1e-6) and np.allclose(ds.std, x.std((0, 2, 3)), atol=1e-4)
    train, test, _ = build.build_loaders(cfg, ds, torch.device("cpu"), seed=0)
    assert torch.allclose(train.mean.flatten(), torch.tensor(ds.mean) * 255)
    assert torch.allclose(test.std.flatten(), torch.tensor(ds.std) * 255)
    mine = build.load_data(data_cfg(folder, tmp_path / "cache", **{"data.mean": [0.5] * 3, "data.std": [0.25] * 3}))
    assert mine.mean == (0.5, 0.5, 0.5) and mine.std == (0.25, 0.25, 0.25)


def test_model_gets_the_number_of_classes_from_the_data(tmp_path, folder):
    cfg = data_cfg(folder, tmp_path / "cache", **{"data.image_size": 16, "model.width": 4})
    ds = build.load_data(cfg)
    assert cfg.data.num_classes is None and cfg.model.num_classes is None  # the saved config stays "from the data"
    model = build.build_model(cfg, torch.device("cpu"), ds.num_classes)
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 3)
    with pytest.raises(ConfigError, match="model.num_classes is null"):
        build.build_model(cfg, torch.device("cpu"))
    with pytest.raises(ConfigError, match="data.num_classes=5 but .* has 3 classes"):
        build.load_data(data_cfg(folder, tmp_path / "cache", **{"data.num_classes": 5}))


# -- one-line errors ---------------------------------------------------------------------------------
def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text and isinstance(err.value, ConfigError)
    return text


def test_an_empty_class_folder_is_an_error(tmp_path):
    root = make_folder(tmp_path / "imgs", n_train=2, n_test=1)
    (root / "train" / "empty").mkdir()
    (root / "train" / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError) as err:
        scan_image_folder(root)
    assert "the class folder train/empty/ has no images" in one_line(err)


def test_test_classes_missing_from_train_are_an_error(tmp_path):
    root = make_folder(tmp_path / "imgs", n_train=2, n_test=1)
    write_images(root / "test" / "stray", 0, 1, np.random.default_rng(0))
    with pytest.raises(DataError) as err:
        scan_image_folder(root)
    assert "test/ has classes that train/ lacks: stray" in one_line(err)


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir(), "has no class folders"),
        (lambda root: (root / ".ipynb_checkpoints").mkdir(parents=True), "has no class folders"),  # hidden
        (lambda root: (root / "test" / "a").mkdir(parents=True), "has test/ but no train/ folder"),
    ],
)
def test_a_folder_without_the_layout_is_an_error(tmp_path, setup, message):
    root = tmp_path / "imgs"
    setup(root)
    with pytest.raises(DataError) as err:
        scan_image_folder(root)
    assert message in one_line(err)


def test_unreadable_images_are_skipped_with_a_count_or_an_error(tmp_path, monkeypatch, caplog):
    root = make_folder(tmp_path / "imgs", n_train=4, n_test=2)
    (root / "train" / "disc" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "test" / "cross" / "truncated.jpg").write_bytes((root / "test" / "cross" / "001.jpg").read_bytes()[:200])
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        build.load_data(data_cfg(root, cache, **{"data.bad_images": "error"}))
    assert "2 of 20 image files cannot be read, e.g. " in one_line(err) and "data.bad_images=skip" in str(err.value)
    assert not list(cache.glob("*.npz"))  # nothing cached from a failed decode

    with caplog.at_level(logging.WARNING, logger="sweeplab.data"):
        ds = build.load_data(data_cfg(root, cache))  # skip: the default
    assert (len(ds.train), len(ds.test)) == (12, 6) and len(ds.skipped) == 2
    assert "left out 2 of 20 unreadable image files" in caplog.text
    assert any("broken.png" in s for s in ds.skipped)
    decodes = Decodes(monkeypatch)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sweeplab.data"):
        build.load_data(data_cfg(root, cache))
    assert decodes.count == 0 and "left out 2 of 20" in caplog.text  # the cache remembers them
    with pytest.raises(DataError, match="cannot be read"):  # and the error policy still applies
        build.load_data(data_cfg(root, cache, **{"data.bad_images": "error"}))


def test_a_class_with_only_unreadable_images_is_an_error(tmp_path):
    root = make_folder(tmp_path / "imgs", n_train=2, n_test=1)
    for f in (root / "train" / "square").iterdir():
        f.write_bytes(b"garbage")
    with pytest.raises(DataError) as err:
        build.load_data(data_cfg(root, tmp_path / "cache", **{"trainer.batch_size": 2}))
    assert "no readable training images of class square" in one_line(err)


def test_a_data_set_too_large_for_the_device_stops_before_decoding(tmp_path, folder, monkeypatch):
    decodes = Decodes(monkeypatch)
    monkeypatch.setattr(data.memory, "free_memory", lambda device: 100_000)
    with pytest.raises(DataError) as err:
        build.load_data(data_cfg(folder, tmp_path / "cache", **{"data.image_size": 64}))
    text = one_line(err)
    assert "the data needs about 1.5 MiB on cpu but only 97.7 KiB is free" in text
    assert "lower data.image_size=64" in text and decodes.count == 0
    needed = data.device_bytes(36, 12, 0, 64, 2)  # 36 train + 12 test at 64x64, baseline padding 2
    assert needed == 48 * 3 * 64 * 64 + 36 * 3 * (68 * 68 + 64 * 64)
    ds = build.load_data(data_cfg(folder, tmp_path / "cache", **{"data.image_size": 8}))  # 8x8 fits
    assert ds.image_size == 8


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("data.path", None, "data.path is not set"),
        ("data.image_size", 0, "data.image_size=0 must be an integer >= 1"),
        ("data.test_fraction", 1.5, "data.test_fraction=1.5 must lie in (0, 1)"),
        ("data.resize", "squash", "data.resize='squash' must be one of stretch, crop"),
        ("data.bad_images", "ignore", "data.bad_images='ignore' must be one of skip, error"),
        ("data.mean", [0.5, 0.5, 0.5], "data.mean and data.std must both be set or both be null"),
    ],
)
def test_bad_image_folder_settings_are_one_line_errors(tmp_path, key, value, message):
    cfg = data_cfg(tmp_path, tmp_path / "cache", **{key: value})
    check_run(data_cfg(tmp_path, tmp_path / "cache"))  # the defaults with a path are fine
    with pytest.raises(ConfigError) as err:
        check_run(cfg)
    assert message in one_line(err)


# -- CIFAR-100 --------------------------------------------------------------------------------------------
def test_cifar100_from_an_npz_copy(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (300, 32, 32, 3), dtype=np.uint8),
        "train_labels": np.arange(300) % 100,
        "test_images": rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8),
        "test_labels": np.arange(100),
    }
    np.savez(tmp_path / "cifar100.npz", **arrays)  # no classes array: CIFAR-100's own names
    monkeypatch.setenv("SWEEPLAB_CIFAR100_NPZ", str(tmp_path / "cifar100.npz"))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["data=cifar100", "trainer.device=cpu", "data.test_limit=50"])
    check_run(cfg)
    ds = build.load_data(cfg)
    assert ds.name == "cifar100" and ds.source == str((tmp_path / "cifar100.npz").resolve())
    assert ds.classes == CIFAR100_CLASSES and len(set(ds.classes)) == 100 and list(ds.classes) == sorted(ds.classes)
    assert (len(ds.train), len(ds.test)) == (300, 50) and ds.mean == tuple(cfg.data.mean)
    assert build.build_model(cfg, torch.device("cpu"))(torch.zeros(1, 3, 32, 32)).shape == (1, 100)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train", overrides=["data=cifar100", "data.npz=null", f"data.root={tmp_path}", "data.download=false"]
        )
    with pytest.raises(DataError) as err:
        build.load_data(cfg)
    assert "CIFAR-100 is not in" in one_line(err) and "SWEEPLAB_CIFAR100_NPZ" in str(err.value)


# -- end to end -------------------------------------------------------------------------------------------
