"""The plugin class Hydra finds (plugins must live in the hydra_plugins package). Hydra imports every
plugin module at each start, so this one stays light: the work is in sweeplab.sweeper."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from hydra_plugins.sweeplab_sweeper import config as _configs  # noqa: F401  (registers them)


class SweeplabSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        # The settings (hydra.sweeper.*) are read from the composed config in setup(), with the rest of
        # the command (the prune group, the tracking store), and checked there.
        self.impl = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from sweeplab.sweeper import StudySweeper

        self.impl = StudySweeper()
        self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.impl.sweep(arguments)
