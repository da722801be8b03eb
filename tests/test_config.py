"""Config composition in-process, for every group option, and the checks on bad input."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from hydra.utils import get_class, instantiate

import sweeplab  # noqa: F401  (resolvers)
from sweeplab.build import build_model, build_scheduler, cuda_graph_of
from sweeplab.checks import check_run
from sweeplab.device import resolve_device
from sweeplab.errors import ConfigError

from support import ROOT

GROUPS = ["model", "optimizer", "scheduler", "augmentation", "data", "trainer", "tracking", "paths", "experiment"]


def cfg_with(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def options(group):
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_validates(group, option):
    extra = ["data.path=/tmp"] if (group, option) == ("data", "image_folder") else []  # the one required value
    if group not in ("model", "experiment"):  # a narrow model where the model is not what the option is about
        extra += ["model=resnet18_narrow", "model.width=4"]
    cfg = cfg_with(f"{group}={option}", "trainer.device=cpu", *extra)
    check_run(cfg)
    model = build_model(cfg, torch.device("cpu"), num_classes=3)  # the data's count, where the config has null
    classes = cfg.model.num_classes or 3
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, classes)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    assert type(optimizer) is get_class(cfg.optimizer._target_) and optimizer.defaults["lr"] == cfg.optimizer.lr
    scheduler, interval, monitor = build_scheduler(cfg.scheduler, optimizer, epochs=3, steps_per_epoch=5)
    if not cfg.scheduler:  # scheduler=none
        assert (scheduler, interval, monitor) == (None, "epoch", None)
        return
    assert type(scheduler) is get_class(cfg.scheduler._target_)
    assert (interval, monitor) == (cfg.scheduler.get("interval", "epoch"), cfg.scheduler.get("monitor"))
    optimizer.step()
    scheduler.step(1.0) if monitor else scheduler.step()  # one step of the schedule as the trainer takes it


def test_defaults_are_the_baseline_recipe():
    cfg = cfg_with()
    assert cfg.model._target_ == "sweeplab.models.resnet18" and cfg.model.width == 64
    assert cfg.optimizer._target_ == "torch.optim.SGD"
    assert (cfg.optimizer.lr, cfg.optimizer.momentum) == (0.01, 0.9)
    assert cfg.scheduler._target_.endswith("ReduceLROnPlateau")
    assert (cfg.scheduler.factor, cfg.scheduler.patience, cfg.scheduler.monitor) == (0.5, 5, "test_loss")
    assert (cfg.trainer.batch_size, cfg.trainer.epochs) == (128, 50)
    assert cfg.augmentation.crop_padding == 2 and cfg.augmentation.flip  # pad to 36, crop 32, flip
    assert list(cfg.data.std) == [0.2470, 0.2435, 0.2616]  # the true CIFAR-10 statistics
    assert cfg_with("experiment=baseline") == cfg  # the recipe file pins exactly the defaults


def test_paths_do_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = cfg_with()
    assert Path(cfg.paths.root) == ROOT
    assert Path(cfg.tracking.store_dir) == ROOT / "mlruns"


def test_onecycle_gets_the_run_length():
    cfg = cfg_with("scheduler=onecycle")
    model = instantiate(cfg.model)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    scheduler, interval, _ = build_scheduler(cfg.scheduler, optimizer, epochs=3, steps_per_epoch=7)
    assert interval == "step" and scheduler.total_steps == 21


def test_data_npz_from_environment(monkeypatch, tiny_npz):
    monkeypatch.setenv("SWEEPLAB_CIFAR10_NPZ", str(tiny_npz))
    assert cfg_with().data.npz == str(tiny_npz)


def test_unknown_group_option_is_refused():
    with pytest.raises(MissingConfigException):
        cfg_with("optimizer=nope")


@pytest.mark.parametrize(
    "override,message",
    [
        ("optimizer.lr=-1", "optimizer.lr=-1 must be a positive number"),
        ("optimizer.lr=0", "optimizer.lr=0 must be a positive number"),
        ("trainer.epochs=0", "trainer.epochs=0 must be an integer >= 1"),
        ("trainer.batch_size=0", "trainer.batch_size=0"),
        ("trainer.device=tpu", "trainer.device='tpu'"),
        ("trainer.precision=fp8", "trainer.precision='fp8'"),
        ("scheduler.monitor=val_loss", "needs a validation split"),
        ("augmentation.pad_mode=wrap", "augmentation.pad_mode='wrap'"),
        ("target_acc=88", "target_acc=88"),
        ("trainer.cuda_graph=maybe", "trainer.cuda_graph='maybe' must be one of auto, True, False"),
        ("trainer.jobs_per_card=0", "trainer.jobs_per_card=0 must be an integer >= 1"),
    ],
)
def test_bad_values_give_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=None) as err:
        check_run(cfg_with(override))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="no CUDA device is available"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_a_grid_sweep_expands_to_every_job_in_hydras_order():
    """sweep.grid (what the sweep callback checks before the first job) lays the jobs out as Hydra's basic
    sweeper runs them: the product of the swept values, in command-line order, the last of a repeated key."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from sweeplab.job import grid

    overrides = [
        "optimizer.lr=0.1,0.01",
        "+extra=1",
        "trainer.epochs=range(1,4)",
        "model=glob(resnet1*)",
        "data.mean=[0.5,0.5,0.5]",
        "tracking.run_name='a,b'",
        "trainer.seed=choice(1,2)",
        "trainer.seed=7",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        jobs = grid(OverridesParser.create(config_loader=loader).parse_overrides(overrides))
    assert len(jobs) == 2 * 3 * 2 and len({tuple(j) for j in jobs}) == 12
    assert jobs[0] == [
        "optimizer.lr=0.1",
        "+extra=1",
        "trainer.epochs=1",
        "model=resnet18",
        "data.mean=[0.5,0.5,0.5]",
        "tracking.run_name='a,b'",
        "trainer.seed=7",
    ]
    assert jobs[1][2:4] == ["trainer.epochs=1", "model=resnet18_narrow"]
    assert jobs[-1][:4] == ["optimizer.lr=0.01", "+extra=1", "trainer.epochs=3", "model=resnet18_narrow"]
    assert all(job[-1] == "trainer.seed=7" for job in jobs)


def test_where_things_are_is_not_what_the_experiment_is():
    """One list (job.ENVIRONMENT_GROUPS and ENVIRONMENT_KEYS) decides which overrides name a run, fill the
    report's table and the sweep command find_lr.py prints, and which groups a rerun takes from its command."""
    from sweeplab import job
    from sweeplab.lr_finder import sweep_command

    overrides = [
        "optimizer.lr=0.1",
        "tracking.uri=http://mlflow-host:5000",
        "tracking=mlflow",
        "paths.log_dir=/tmp/outputs",
        "data.npz=/data/cifar10.npz",
        "+trainer.device=cpu",
        "data.train_limit=100",
        "lr_finder.num_iter=50",
    ]
    assert job.experiment_overrides(overrides) == ["optimizer.lr=0.1", "data.train_limit=100", "lr_finder.num_iter=50"]
    assert job.run_name(overrides) == "optimizer.lr=0.1 data.train_limit=100 lr_finder.num_iter=50"
    assert sweep_command(["1e-2"], overrides) == "python train.py -m data.train_limit=100 optimizer.lr=1e-2"
    assert set(job.ENVIRONMENT_GROUPS) <= set(cfg_with())  # groups a saved config's rerun takes whole


def test_cuda_graph_is_on_for_cuda_by_default_and_can_be_switched_off():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert cfg_with().trainer.cuda_graph == "auto"
    assert not cuda_graph_of(cfg_with(), cpu) and cuda_graph_of(cfg_with(), cuda)
    assert not cuda_graph_of(cfg_with("trainer.cuda_graph=false"), cuda)
    assert not cuda_graph_of(cfg_with("trainer.compile=true"), cuda)  # torch.compile brings its own
    with pytest.raises(ConfigError, match="trainer.cuda_graph=true needs a CUDA device, not cpu"):
        check_run(cfg_with("trainer.cuda_graph=true", "trainer.device=cpu"))
    with pytest.raises(ConfigError, match="choose one"):
        check_run(cfg_with("trainer.cuda_graph=true", "trainer.compile=true", "trainer.device=cpu"))
