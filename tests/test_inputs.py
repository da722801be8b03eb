"""Every user input either reaches the point where its run would be created or stops with the one-line
ConfigError before any MLflow run exists (property-based), and the inputs issue "Nothing escapes"
names: schedules that cannot run, stores that cannot be used.

The property test composes every group option up front (Hydra takes ~0.2 s a composition: one
composition picks one option of every group, so four give them all), then draws a choice per group
and values for any scalar key of the composed config, and runs the real training task up to the
moment its MLflow run would be created: the checks, the store's set-up, the data, seeding, every
piece of the run and its training-step rehearsal, the run's tags and name. A second property draws
Hydra launcher and sweeper settings and rehearses the sweep as ``train.py -m`` does before its first
job. ``HYPOTHESIS_PROFILE=thorough`` draws a thousand examples instead of CI's few dozen."""

from __future__ import annotations

import math
import re
import sqlite3
from functools import cache
from unittest import mock

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra._internal.callbacks import Callbacks
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.types import HydraContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf

from sweeplab import rehearsal, tracking, training
from sweeplab.errors import ConfigError

from images import make_folder
from support import ROOT, new_store

GROUPS = ("model", "optimizer", "scheduler", "augmentation", "data", "experiment")
# Keys not drawn: data.download would reach for the network (the tests have none).
SKIP = ("data.download",)
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


def scalar_keys(node: DictConfig, prefix: str = "") -> list[str]:
    out = []
    for key in node:
        path = f"{prefix}{key}"
        value = node._get_node(key)
        if isinstance(value, DictConfig):
            out += scalar_keys(value, path + ".")
        elif not path.startswith(SKIP):
            out.append(path)
    return out


def base(npz: str, folder: str, choices: dict) -> DictConfig:
    """The defaults with each drawn group option swapped in (an experiment is a whole recipe: its base),
    everything a run writes kept in ``folder``."""
    experiment = choices.pop("experiment")
    cfg = OmegaConf.create(OmegaConf.to_container(composed((f"experiment={experiment}",) if experiment else ())))
    for group, option in choices.items():
        cfg[group] = group_options()[group, option]
    cfg.trainer.device, cfg.trainer.epochs, cfg.trainer.batch_size = "cpu", 2, 20
    cfg.tracking.update(uri=None, store_dir=f"{folder}/mlruns", system_metrics=False)
    cfg.paths.update(root=folder, data_dir=f"{folder}/data", log_dir=f"{folder}/outputs")
    cfg.paths.checkpoint_dir = f"{folder}/checkpoints"
    if cfg.data.name == "image_folder":
        cfg.data.update(path=f"{folder}/images", image_size=32, cache_dir=f"{folder}/cache")
    else:
        tiny = npz if cfg.data.name == "cifar10" else f"{folder}/tiny100.npz"
        cfg.data.update(npz=tiny, root=f"{folder}/data", train_limit=120, test_limit=40)
    cfg.data.download = False  # no network here: a one-line error either way
    return cfg


class RunCreated(BaseException):
    """The training task got as far as creating its MLflow run."""


def until_the_run(cfg: DictConfig) -> None:
    """The real training task (train.py's), up to the moment its MLflow run would be created; called
    as outside a Hydra app, whatever Hydra job an earlier test of this process left behind."""

    def open_run(*args, **kwargs):
        raise RunCreated

    try:
        with mock.patch.object(HydraConfig.instance(), "cfg", None), mock.patch.object(tracking, "open_run", open_run):
            training.train(cfg)
    except RunCreated:
        pass
    finally:
        torch.use_deterministic_algorithms(False)  # trainer.deterministic=true is set process-wide


@st.composite
def inputs(draw, npz, folder):
    choices = {g: draw(st.sampled_from(options(g) + ([None] if g == "experiment" else []))) for g in GROUPS}
    cfg = base(npz, folder, dict(choices))
    keys = draw(st.lists(st.sampled_from(scalar_keys(cfg)), max_size=2, unique=True))
    changes = {key: draw(st.sampled_from(VALUES)) for key in keys}
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return choices, changes, cfg


@pytest.fixture(scope="module")
def npz(tiny_npz):
    return str(tiny_npz)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_npz):
    """Where the property's runs set up their store (a copy of the session's empty one) and write."""
    tmp = tmp_path_factory.mktemp("inputs")
    new_store(tmp / "mlruns")
    make_folder(tmp / "images")
    with np.load(tiny_npz) as z:  # CIFAR-100's stand-in: the tiny images under 100 class names
        np.savez(tmp / "tiny100.npz", **{**z, "classes": np.array([f"class{i}" for i in range(100)])})
    return tmp


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_input_reaches_its_run_or_is_one_line_before_it(npz, folder, data, monkeypatch):
    monkeypatch.chdir(folder)  # relative paths a draw gives (tracking.store_dir=abc) land here
    choices, changes, cfg = data.draw(inputs(npz, str(folder)))
    client = tracking.open_store(OmegaConf.create({"uri": None, "store_dir": str(folder / "mlruns")}))
    torch.manual_seed(0)
    try:
        until_the_run(cfg)
    except ConfigError as err:
        assert "\n" not in str(err) and str(err), (choices, changes, str(err))
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])  # no run, ever


def test_the_property_covers_every_group_option_and_scalar_key(npz, folder):
    """What the strategy draws from: every option of every group, and the scalar keys of the config,
    including those the run's set-up reads before its pieces are built."""
    keys = scalar_keys(base(npz, str(folder), {g: None if g == "experiment" else options(g)[0] for g in GROUPS}))
    assert {
        "trainer.epochs",
        "trainer.batch_size",
        "trainer.progress",
        "trainer.seed",
        "optimizer.lr",
        "augmentation.crop_padding",
        "target_acc",
        "model.width",
        "data.val_split",
        "tracking.uri",
        "tracking.store_dir",
        "tracking.system_metrics_interval",
        "tracking.secret_keys",
        "paths.checkpoint_dir",
        "resume",
    } <= set(keys)
    assert all(len(options(g)) >= 2 for g in GROUPS)
    # group_options() composes several groups' options at once: right only while no option reaches
    # beyond its own group.
    for group in GROUPS:
        if group != "experiment":
            for option in options(group):
                text = (ROOT / "conf" / group / f"{option}.yaml").read_text()
                assert "@package" not in text and "defaults:" not in text, f"{group}/{option}.yaml"


def test_a_setting_that_builds_but_cannot_train_stops_before_the_run(npz, folder, monkeypatch):
    """Inception v3 builds for any number of classes, and its stem cannot take 32x32 images: the
    rehearsal's forward pass says so in torch's words, before the run exists."""
    monkeypatch.chdir(folder)
    cfg = base(npz, str(folder), {g: None if g == "experiment" else options(g)[0] for g in GROUPS})
    cfg.model = OmegaConf.merge(group_options()["model", "torchvision"], {"name": "inception_v3"})
    with pytest.raises(ConfigError) as err:
        until_the_run(cfg)
    assert str(err.value) == (
        "the model cannot train on this run's 3x32x32 images: Calculated padded input size per channel: (1 x 1). "
        "Kernel size: (3 x 3). Kernel size can't be greater than actual input size"
    )


# -- launcher and sweeper settings ------------------------------------------------------------------
LAUNCHERS = ("basic", "joblib", "submitit_local", "submitit_slurm", "slurm")
SWEEPERS = ((), ("hparams_search=optuna_lr",))


def override(value) -> str:
    """``value`` as a command line writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return str(value).replace(" ", "")


@cache
def plugin_keys(launcher: str, sweeper: tuple) -> list[str]:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={launcher}", *sweeper], return_hydra_config=True)
    return scalar_keys(cfg.hydra.launcher, "hydra.launcher.") + scalar_keys(cfg.hydra.sweeper, "hydra.sweeper.")


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_launcher_and_sweeper_setting_rehearses_or_is_one_line(npz, folder, data):
    """What train.py -m does before its first job with the launcher's and the sweeper's settings:
    either the sweeper reaches its first launch with the launcher ready, or one ConfigError line.
    (A value Hydra cannot even merge into a plugin's typed config is Hydra's own error at the command
    line, before anything runs.)"""
    launcher, sweeper = data.draw(st.sampled_from(LAUNCHERS)), data.draw(st.sampled_from(SWEEPERS))
    keys = data.draw(st.lists(st.sampled_from(plugin_keys(launcher, sweeper)), max_size=2, unique=True))
    changes = [f"{key}={override(data.draw(st.sampled_from(VALUES)))}" for key in keys]
    job = [f"data.npz={npz}", "trainer.device=cpu", f"tracking.store_dir={folder}/mlruns"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        try:
            cfg = compose(
                "train", overrides=[f"hydra/launcher={launcher}", *sweeper, *changes, *job], return_hydra_config=True
            )
        except Exception:  # Hydra's own refusal at composition
            return
        try:
            rehearsal.rehearse_sweep(cfg)
        except ConfigError as err:
            assert "\n" not in str(err) and str(err).startswith(("hydra.launcher (", "hydra.sweeper (")), (changes, err)


# -- schedules that cannot run for the run's length ----------------------------------------------
def test_one_cycle_over_four_steps_is_one_line_before_any_work(tiny_npz, folder, monkeypatch):
    monkeypatch.chdir(folder)
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
        until_the_run(OmegaConf.merge(cfg, {"tracking": {"store_dir": f"{folder}/mlruns"}}))


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


@pytest.mark.parametrize(
    "launcher,setting,refusal",
    [
        ("joblib", "hydra.launcher.n_jobs=0", "n_jobs == 0 in Parallel has no meaning"),
        ("submitit_local", "hydra.launcher.nodes=2", "LocalExecutor can use only one node. Use nodes=1"),
    ],
)
def test_the_rehearsal_refuses_what_the_launchers_own_launch_refuses(launcher, setting, refusal, tmp_path):
    """rehearsal.launch_nothing asks each launcher what its launch refuses (for submitit by mirroring the
    start of its launch): the plugin's real launch, given a job, refuses the setting in the same words
    before it starts the job, and the rehearsed sweep says so in one line."""
    started = []
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        overrides = [f"hydra/launcher={launcher}", setting, f"hydra.sweep.dir={tmp_path}"]
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=Callbacks())
        real = Plugins.instance().instantiate_launcher(hydra_context=context, task_function=started.append, config=cfg)
        with pytest.raises(Exception, match=re.escape(refusal)):
            real.launch([["optimizer.lr=0.1"]], initial_job_idx=0)
        with pytest.raises(ConfigError) as err:
            rehearsal.rehearse_sweep(cfg)
    assert str(err.value) == f"hydra.launcher ({type(real).__name__}): {refusal}" and not started
