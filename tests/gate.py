"""An engine callback for sweeps that must prove two jobs ran at the same time
(``+trainer.callbacks.gate._target_=gate.Gate``): the job whose number (``hydra.job.num``: in a
sweep, its trial's) is ``wait`` holds after its first epoch until ``flag`` exists; the job numbered
``touch`` writes ``flag`` as it starts (or a test writes it). A sweep whose held job can only go on
once another job has started proves that that job started while the held one ran."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sweeplab.engine import Callback


class Gate(Callback):
    def __init__(self, flag: str, wait: int | None = None, touch: int | None = None, timeout_s: float = 180):
        self.flag, self.wait, self.touch, self.timeout_s = Path(flag), wait, touch, float(timeout_s)

    @staticmethod
    def _number() -> int:
        from hydra.core.hydra_config import HydraConfig

        return int(HydraConfig.get().job.num)

    def on_fit_start(self, trainer) -> None:
        if self.touch is not None and self._number() == self.touch:
            self.flag.write_text(str(os.getpid()))

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        if metrics["epoch"] != 1 or self.wait is None or self._number() != self.wait:
            return
        deadline = time.monotonic() + self.timeout_s
        while not self.flag.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing wrote {self.flag} within {self.timeout_s:g} s while job {self.wait} ran")
            time.sleep(0.05)


def gate_overrides(flag: Path, wait: int | None = None, touch: int | None = None) -> list[str]:
    return [
        f"+trainer.callbacks.gate._target_={__name__}.Gate",
        f"+trainer.callbacks.gate.flag={flag}",
        *([f"+trainer.callbacks.gate.wait={wait}"] if wait is not None else []),
        *([f"+trainer.callbacks.gate.touch={touch}"] if touch is not None else []),
    ]
