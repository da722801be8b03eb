"""Every user input either builds or stops with the one-line ConfigError (property-based), and the
inputs issue "Nothing escapes" names: schedules that cannot run, stores that cannot be used.

The property test composes every group option up front (Hydra takes ~0.2 s a composition: one
composition picks one option of every group, so four give them all), then draws a choice per group
and values for scalar keys, and builds every piece of a run in-process (data,
model, optimizer, scheduler, augmentation, loaders) without training. ``HYPOTHESIS_PROFILE=thorough``
draws a thousand examples instead of CI's few dozen."""

from __future__ import annotations

import math
import sqlite3
from functools import cache

import pytest
import torch
from hydra import compose, initialize_config_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf

from sweeplab import build, tracking
from sweeplab.checks import check_run
from sweeplab.errors import ConfigError

from support import ROOT, new_store

GROUPS = ("model", "optimizer", "scheduler", "augmentation", "data", "experiment")
# Scalars a user could set wrongly; paths and where-things-are keys are out of scope here.
SKIP = (
    "paths.",
    "tracking.",
    "hydra.",
    "task_name",
    "reproduce",
    "resume",
    "origin_run",
    "trainer.device",
    "trainer.callbacks",
    "data.root",
    "data.npz",
    "data.path",
    "data.cache_dir",
    "data.download",
    "model._target_",
    "optimizer._target_",
    "scheduler._target_",
    "optimizer._partial_",
    "scheduler._partial_",
    "trainer.progress",
    "data.workers",
)
VALUES = (0, -1, 3, 0.5, 10**9, math.nan, "abc", "", True, None, [1, 2])


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


@cache
def composed(overrides: tuple[str, ...]) -> DictConfig:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@cache
def group_options() -> dict[tuple[str, str], DictConfig]:
    """(group, option) -> that option's node as Hydra composes it. Composition i picks option i of every
    group: an option only sets its own group (no package directive, no defaults list; the test below
    checks the files), so its node is the same whatever the other groups picked."""
    groups = [g for g in GROUPS if g != "experiment"]
    nodes = {}
    for i in range(max(len(options(g)) for g in groups)):
        picks = {g: options(g)[i % len(options(g))] for g in groups}
        cfg = composed(tuple(f"{g}={o}" for g, o in picks.items()))
        nodes.update({(g, o): cfg[g] for g, o in picks.items()})
    return nodes


def scalar_keys(cfg: DictConfig) -> list[str]:
    out = []

    def walk(node, prefix):
        for key in node:
            path = f"{prefix}{key}"
            value = node._get_node(key)
            if isinstance(value, DictConfig):
                walk(value, path + ".")
            elif not path.startswith(SKIP):
                out.append(path)

    walk(cfg, "")
    return out


@cache
def tiny_data(npz: str):
    overrides = (
        "trainer.device=cpu",
        "trainer.batch_size=20",
        f"data.npz={npz}",
        "data.train_limit=120",
        "data.test_limit=40",
    )
    return build.load_data(composed(overrides))


def base(npz: str, choices: dict) -> DictConfig:
    """The defaults with each drawn group option swapped in (an experiment is a whole recipe: its base)."""
    experiment = choices.pop("experiment")
    cfg = OmegaConf.create(OmegaConf.to_container(composed((f"experiment={experiment}",) if experiment else ())))
    for group, option in choices.items():
        cfg[group] = group_options()[group, option]
    cfg.trainer.device, cfg.trainer.epochs, cfg.trainer.batch_size = "cpu", 2, 20
    if cfg.data.name == "cifar10":
        cfg.data.update(npz=npz, train_limit=120, test_limit=40)
    else:
        cfg.data.download = False  # no network here: a one-line error either way
    return cfg


def build_pieces(cfg: DictConfig) -> None:
    """Everything train.py builds before its MLflow run, on the CPU, without training."""
    check_run(cfg)
    device = build.device_of(cfg)
    data = tiny_data(cfg.data.npz) if cfg.data.name == "cifar10" and cfg.data.npz else build.load_data(cfg)
    if cfg.trainer.batch_size > len(data.train) or (cfg.data.get("train_limit") or 120) != 120:
        data = build.load_data(cfg)
    build.build_trainer(cfg, device, data)


@st.composite
def inputs(draw, npz):
    choices = {g: draw(st.sampled_from(options(g) + ([None] if g == "experiment" else []))) for g in GROUPS}
    cfg = base(npz, dict(choices))
    keys = draw(st.lists(st.sampled_from(scalar_keys(cfg)), max_size=2, unique=True))
    changes = {key: draw(st.sampled_from(VALUES)) for key in keys}
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return choices, changes, cfg


@pytest.fixture(scope="module")
def npz(tiny_npz):
    return str(tiny_npz)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_input_builds_or_is_one_line(npz, data):
    choices, changes, cfg = data.draw(inputs(npz))
    torch.manual_seed(0)
    try:
        build_pieces(cfg)
    except ConfigError as err:
        assert "\n" not in str(err) and str(err), (choices, changes, str(err))


def test_the_property_covers_every_group_option_and_scalar_key(npz):
    """What the strategy draws from: every option of every group, and the scalar keys of the config."""
    keys = scalar_keys(base(npz, {g: None if g == "experiment" else options(g)[0] for g in GROUPS}))
    assert {
        "trainer.epochs",
        "trainer.batch_size",
        "optimizer.lr",
        "augmentation.crop_padding",
        "target_acc",
        "model.width",
        "data.val_split",
    } <= set(keys)
    assert all(len(options(g)) >= 2 for g in GROUPS)
    # group_options() composes several groups' options at once: right only while no option reaches
    # beyond its own group.
    for group in GROUPS:
        if group != "experiment":
            for option in options(group):
                text = (ROOT / "conf" / group / f"{option}.yaml").read_text()
                assert "@package" not in text and "defaults:" not in text, f"{group}/{option}.yaml"


# -- schedules that cannot run for the run's length ----------------------------------------------
def test_one_cycle_over_four_steps_is_one_line_before_any_work(tiny_npz):
    cfg = composed(
        (
            "scheduler=onecycle",
            "trainer.device=cpu",
            f"data.npz={tiny_npz}",
            "data.train_limit=40",
            "trainer.batch_size=20",
            "trainer.epochs=2",
            "model=resnet18_narrow",
        )
    )
    with pytest.raises(ConfigError, match=r"scheduler: cannot run over this run's 4 steps \(float division by zero\)"):
        build_pieces(cfg)


# -- stores that exist but cannot be used ------------------------------------------------------------
def store(folder, uri=None):
    return OmegaConf.create({"uri": uri, "store_dir": str(folder), "experiment": "x"})


def test_a_file_that_is_not_a_database(tmp_path):
    (tmp_path / "mlflow.db").write_text("not a database")
    with pytest.raises(ConfigError, match=r"mlflow.db is not an SQLite database: point tracking.store_dir"):
        tracking.setup(store(tmp_path))


def test_a_folder_in_place_of_the_database(tmp_path):
    (tmp_path / "mlflow.db").mkdir()
    with pytest.raises(ConfigError, match=r"mlflow.db is not a file"):
        tracking.setup(store(tmp_path))


def test_a_newer_schema(tmp_path):
    tracking.setup(store(new_store(tmp_path)))
    with sqlite3.connect(tmp_path / "mlflow.db") as con:
        con.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    with pytest.raises(ConfigError, match=r"its schema \(ffffffffffff\) is newer than this MLflow"):
        tracking.setup(store(tmp_path))


def test_a_read_only_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow creates the folder of the "file:<path>" it is given, relative to here
    tracking.setup(store(new_store(tmp_path)))
    read_only = f"sqlite:///file:{tmp_path / 'mlflow.db'}?mode=ro&uri=true"
    with pytest.raises(ConfigError, match=r"is not usable: attempt to write a readonly database$"):
        tracking.setup(store(tmp_path, read_only))


def test_a_store_folder_that_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"tracking.store_dir=.*file/mlruns cannot be created"):
        tracking.setup(store(tmp_path / "file" / "mlruns"))
