"""An engine callback that tests put into a run (``+trainer.callbacks.pause._target_=pause.PauseAfterEpoch``)
to interrupt it at a known point: after epoch ``epoch`` is checkpointed it writes ``flag`` and waits,
so a test signals or kills a run that is exactly there, however fast or slow the machine is. With
``signal`` it sends that signal to its own process there: the same delivery as from outside (a
scheduler's SIGTERM, a requeue's SIGUSR2), with no other process to start or to wait for. With ``job``
it pauses only in the multirun job of that number (``hydra.job.num``: in a sweep, the trial's)."""

from __future__ import annotations

import os
import signal as signals
import time
from pathlib import Path

from sweeplab.engine import Callback

# How long a paused run waits for the signal that ends it before it gives up with an error: a test
# that never signals, or a signal the process ignores, fails the test instead of hanging the suite.
WAIT_S = 300


class PauseAfterEpoch(Callback):
    def __init__(self, epoch: int, flag: str, signal: str | None = None, job: int | None = None):
        self.epoch, self.flag, self.signal, self.job = int(epoch), Path(flag), signal, job

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        if metrics["epoch"] != self.epoch:
            return
        if self.job is not None:
            from hydra.core.hydra_config import HydraConfig

            if HydraConfig.get().job.num != self.job:
                return
        self.flag.write_text(f"{self.epoch} {os.getpid()}")  # the process to signal (a launcher may start it)
        wait = WAIT_S
        if self.signal:
            os.kill(os.getpid(), getattr(signals, self.signal))
            wait = 30  # a signal to oneself arrives at once
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:  # until the signal ends the run
            time.sleep(0.05)
        raise RuntimeError(f"paused after epoch {self.epoch}: no signal ended the run within {wait} s")


def pause_overrides(epoch: int | str, flag: Path, signal: str | None = None, job: int | None = None) -> list[str]:
    """The overrides that put the pause into a run; ``epoch`` may be a sweep's values ("1,99")."""
    return [
        f"+trainer.callbacks.pause._target_={__name__}.PauseAfterEpoch",
        f"+trainer.callbacks.pause.epoch={epoch}",
        f"+trainer.callbacks.pause.flag={flag}",
        *([f"+trainer.callbacks.pause.signal={signal}"] if signal else []),
        *([f"+trainer.callbacks.pause.job={job}"] if job is not None else []),
    ]


def wait_for(flag: Path, proc, timeout: float = 300) -> None:
    """Until the paused run has written ``flag`` (its process must still be running)."""
    deadline = time.monotonic() + timeout
    while not flag.exists():
        assert proc.poll() is None, (
            f"the run ended before its pause: {proc.stderr.read()[-3000:] if proc.stderr else ''}"
        )
        assert time.monotonic() < deadline, f"no pause within {timeout} s"
        time.sleep(0.05)
