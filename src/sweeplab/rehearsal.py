"""A multirun rehearsed before its first job and before its parent run exists (the sweep callback
calls these), so that what cannot run is one ConfigError line, not a traceback after jobs trained:

- ``rehearse_jobs``: each job's pieces built on its data, with their rehearsed training step
  (build.rehearse_step): data that cannot be read, a model that cannot train;
- ``rehearse_sweep``: the launcher's and the sweeper's own settings, with their own code: the
  sweeper runs up to its first launch, the launcher is built and asked to launch nothing. Nothing
  here knows a list of valid settings: Hydra's plugins, joblib, submitit and Optuna decide."""

from __future__ import annotations

import copy
import logging
import tempfile
import traceback
import warnings
from contextlib import contextmanager

import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf, open_dict

from sweeplab import build, job
from sweeplab.errors import ConfigError, first_line


def rehearse_jobs(jobs: list[DictConfig], swept: set[str] = frozenset()) -> None:
    """Build each job's pieces on its data, which rehearses their training step (build.build_trainer);
    jobs that would load the same data load it once, one data set held at a time. ``swept`` (keys)
    names a job in a message by the values it sweeps."""
    loaded: dict[str, object] = {}
    for cfg in jobs:
        try:
            device = build.device_of(cfg)
            what = (cfg.data, cfg.augmentation.crop_padding, cfg.trainer.batch_size, str(device))
            key = repr([OmegaConf.to_container(n, resolve=True) if OmegaConf.is_config(n) else n for n in what])
            if key not in loaded:
                loaded = {key: build.load_data(cfg)}
            build.build_trainer(cfg, device, loaded[key])
        except ConfigError as err:
            overrides = list(cfg.hydra.overrides.task) if "hydra" in cfg else []
            label = [o for o in overrides if job.key_of(o) in swept] or overrides
            raise ConfigError(f"job {' '.join(label)}: {err}") from None
    if torch.cuda.is_initialized():  # the jobs may run in other processes: give their memory back
        torch.cuda.empty_cache()


def launch_nothing(launcher) -> None:
    """What ``launcher`` refuses in its settings when it launches, asked without starting a job.
    Hydra's joblib launcher launches an empty batch (joblib's Parallel checks its settings then).
    Submitit's launcher refuses an empty batch, so its executor is made and given the settings as its
    ``launch`` does (submitit checks them, and that SLURM is there). Any other launcher: what its
    constructor and setup checked. tests/test_inputs.py fails if a plugin upgrade changes what this
    mirrors."""
    module = type(launcher).__module__
    if module.startswith("hydra_plugins.hydra_joblib_launcher."):
        launcher.launch([], initial_job_idx=0)
    elif module.startswith("hydra_plugins.hydra_submitit_launcher."):
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        kind, params = launcher._EXECUTOR, dict(launcher.params)
        with tempfile.TemporaryDirectory() as folder:
            init = {f"{kind}_max_num_timeout": params.pop("max_num_timeout")} if "max_num_timeout" in params else {}
            executor = submitit.AutoExecutor(cluster=kind, folder=folder, **init)
            params.pop("submitit_folder", None)
            shared = set(OmegaConf.structured(BaseQueueConf).keys())
            executor.update_parameters(**{k if k in shared else f"{kind}_{k}": v for k, v in params.items()})


@contextmanager
def _launchers_stop_at_the_first_batch():
    """While a sweeper is rehearsed, the launcher it gets from Hydra (``Plugins.instantiate_launcher``,
    the way every sweeper gets its launcher) is the real one, built and asked to launch nothing; its
    first real batch stops the rehearsal instead of starting jobs. (Hydra has no hook for this: the
    Plugins singleton's method is replaced for the rehearsal and put back; the tests of a refused
    sweeper setting fail if a Hydra upgrade changes how sweepers get their launcher.)"""
    plugins = Plugins.instance()
    real = plugins.instantiate_launcher

    def stop(job_overrides, initial_job_idx):
        if not job_overrides:
            raise RuntimeError("it hands the launcher an empty batch of jobs")
        raise _FirstBatch()

    def instantiate_launcher(**kwargs):
        node = kwargs["config"].hydra.launcher
        name = str(node.get("_target_", "?")).rsplit(".", 1)[-1] if node is not None else "none"
        try:
            launcher = real(**kwargs)
            launch_nothing(launcher)
        except Exception as err:
            raise _LauncherRefused(name, err) from None
        launcher.launch = stop
        return launcher

    plugins.instantiate_launcher = instantiate_launcher
    try:
        yield
    finally:
        del plugins.instantiate_launcher  # the class's own method again


def rehearse_sweep(config: DictConfig) -> None:
    """Run the configured sweeper up to its first launch, with the configured launcher built and asked
    to launch nothing: what either refuses in its own settings (joblib's n_jobs=0, Optuna's direction,
    no SLURM for a SLURM launcher, ...) is one ConfigError line now, before any job and before the
    sweep's parent run, not a traceback from inside the sweep. The plugins' own code decides; their
    log lines are silenced and what they write goes to a temporary sweep folder."""
    sweeper_node = config.hydra.get("sweeper")
    sweeper = str(sweeper_node.get("_target_", "?")).rsplit(".", 1)[-1] if sweeper_node is not None else "none"
    dry = copy.deepcopy(config)  # its sweep folder a temporary one
    OmegaConf.set_readonly(dry, False)
    # No callbacks: the rehearsal stops before the first job, where Hydra would call them.
    context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=None)
    previous = logging.root.manager.disable
    with tempfile.TemporaryDirectory() as folder, _launchers_stop_at_the_first_batch(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open_dict(dry):
            dry.hydra.sweep.dir = folder
        logging.disable(logging.CRITICAL)
        try:
            plugin = Plugins.instance().instantiate_sweeper(config=dry, hydra_context=context, task_function=_no_job)
            plugin.sweep(arguments=list(config.hydra.overrides.task))
        except _FirstBatch:
            pass
        except _LauncherRefused as err:
            raise ConfigError(str(err)) from None
        except Exception as err:
            raise ConfigError(f"hydra.sweeper ({sweeper}): {_reason(err)}") from None
        finally:
            logging.disable(previous)


class _FirstBatch(BaseException):
    """The rehearsed sweeper reached its first launch (BaseException: a sweeper's ``except Exception`` lets it by)."""


class _LauncherRefused(Exception):
    def __init__(self, launcher: str, err: BaseException):
        super().__init__(f"hydra.launcher ({launcher}): {_reason(err)}")


def _reason(err: BaseException) -> str:
    """The one line a library gave; for an error that names nothing (a bare assert, a division by
    zero), the line of its code that raised it."""
    err = err.__cause__ or err  # Hydra's instantiate wraps the constructor's own error
    text = first_line(err)
    if not str(err).strip() or isinstance(err, (AssertionError, ZeroDivisionError)):
        frames = traceback.extract_tb(err.__traceback__)
        line = frames[-1].line if frames else ""
        text = f"{text} (at `{line}`)" if line else text
    return text


def _no_job(cfg: DictConfig) -> None:
    raise AssertionError("a rehearsed sweep runs no job")
