"""The one fit/evaluate loop: epochs, metrics, scheduler steps and checkpoints.

It reports through callbacks and knows nothing of MLflow or Hydra, so it can be benchmarked bare.
Inside a training step nothing waits for the device: loss and accuracy accumulate there and are
read once per epoch (and at each progress-bar refresh when a terminal shows one). With
``cuda_graph`` the step's forward and backward replay a captured CUDA graph (sweeplab.graph_step).
"""

from __future__ import annotations

import copy
import logging
import math
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sweeplab import checkpoint
from sweeplab.errors import RunFailed
from sweeplab.graph_step import GraphStep

log = logging.getLogger(__name__)


class NonFiniteLossError(RunFailed):
    """The training loss became NaN or infinite (usually: the learning rate is too high)."""


class Callback:
    """Hooks the engine calls; ``metrics`` is the epoch's dict (see ``Trainer.fit``). A callback may end
    the fit early with ``trainer.stop(reason)``."""

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_epoch_end(self, trainer: Trainer, metrics: dict) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> None: ...


def higher_is_better(metric: str) -> bool:
    """Accuracies go up, losses go down."""
    return not metric.endswith("loss")


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs (a
    resumed fit counts from the epochs it trained before). The best weights stay in best.pt."""

    def __init__(self, patience: int, monitor: str = "test_acc", min_delta: float = 0.0):
        self.patience, self.monitor, self.min_delta = int(patience), monitor, float(min_delta)

    def on_epoch_end(self, trainer: Trainer, metrics: dict) -> None:
        values = [m[self.monitor] for m in trainer.history]
        sign = 1 if higher_is_better(self.monitor) else -1
        best_at, best = 0, sign * values[0]
        for i, value in enumerate(values[1:], 1):
            if sign * value > best + self.min_delta:
                best_at, best = i, sign * value
        waited = len(values) - 1 - best_at
        if waited >= self.patience:
            trainer.stop(f"{self.monitor} has not improved for {waited} epochs (patience {self.patience})")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:  # slower on GPU: deterministic kernels, no cuDNN autotuning
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


@torch.inference_mode()
def evaluate(model, loader, device: torch.device, *, autocast=None, tta_flip: bool = False) -> dict:
    """Mean loss, accuracy and per-image predictions of ``model`` over ``loader`` (in its order).

    ``tta_flip`` averages the logits of each image and its mirror image. The model is put in eval mode.
    """
    model.eval()
    loss_sum = torch.zeros((), device=device)
    preds = []
    for x, y in loader:
        with autocast or nullcontext():
            logits = model(x)
            if tta_flip:
                logits = (logits + model(x.flip(3))) / 2
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        preds.append(logits.argmax(1))
    preds = torch.cat(preds)
    correct = int((preds == loader.labels[: len(preds)]).sum())
    n = len(preds)
    return {"loss": loss_sum.item() / n, "acc": correct / n, "correct": correct, "total": n, "preds": preds}


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_loader,
        test_loader,
        *,
        device: torch.device,
        scheduler=None,
        scheduler_interval: str = "epoch",
        monitor: str | None = "test_loss",
        val_loader=None,
        precision: str = "fp32",
        label_smoothing: float = 0.0,
        tta_flip: bool = False,
        target_acc: float = 0.88,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 1,  # 0: never
        callbacks=(),
        progress: bool | None = None,
        compile: bool = False,
        cuda_graph: bool = False,  # on a CPU: the same static step without capture (what the tests check)
    ):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.train_loader, self.test_loader, self.val_loader = train_loader, test_loader, val_loader
        self.device, self.scheduler_interval, self.monitor = device, scheduler_interval, monitor
        self.autocast = (  # a captured graph must not keep autocast's cast weights between replays
            torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=not cuda_graph)
            if precision == "bf16"
            else nullcontext()
        )
        self.label_smoothing, self.tta_flip, self.target_acc = label_smoothing, tta_flip, target_acc
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.checkpoint_every, self.callbacks = checkpoint_every, list(callbacks)
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.compile = compile
        self.compile_seconds: float | None = None  # measured by warm_up() when compiling
        self.forward = torch.compile(model) if compile else model
        self.graph_step = (
            GraphStep(self._forward_backward, model.parameters(), capture=device.type == "cuda") if cuda_graph else None
        )
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # a graph replays on the current device's stream: this job's card
        self.epoch = 0  # last completed epoch
        self.history: list[dict] = []
        self.best: dict = {"test_acc": -1.0, "epoch": None}
        self.epochs_to_target: int | None = None
        self._unsaved: dict | None = None  # the last complete epoch's state while last.pt is older
        self.epochs: int | None = None  # the last epoch of the current fit
        self.stopped_at: int | None = None  # the epoch after which a callback stopped the fit
        self.stop_reason: str | None = None

    # -- one epoch -------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict:
        self.model.train()
        loader = self.train_loader
        loader.set_epoch(epoch)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        bar = tqdm(total=len(loader), desc=f"Epoch {epoch}", leave=False, disable=not self.progress, dynamic_ncols=True)
        start = time.perf_counter()
        for step, (x, y) in enumerate(loader):
            loss, hits = self._step(x, y)
            self.optimizer.step()
            if self.scheduler is not None and self.scheduler_interval == "step":
                self.scheduler.step()
            loss_sum += loss * len(y)
            correct += hits
            seen += len(y)
            if bar.disable:
                continue
            bar.update()
            if step % 20 == 0 or step == len(loader) - 1:  # the only host syncs, and only on a terminal
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{100 * correct.item() / seen:.2f}%")
        bar.close()
        train_loss, train_correct = loss_sum.item(), correct.item()  # waits for the device once
        seconds = time.perf_counter() - start
        if not math.isfinite(train_loss):
            raise NonFiniteLossError(
                f"training loss became {train_loss / seen} in epoch {epoch} (lr={self.lr:g}); lower optimizer.lr"
            )
        return {
            "train_loss": train_loss / seen,
            "train_acc": train_correct / seen,
            "epoch_time": seconds,
            "images_per_sec": seen / seconds,
        }

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, loss and backward of one batch, from the CUDA graph where there is one."""
        if self.graph_step is not None:
            return self.graph_step(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        return self._forward_backward(x, y)

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's device work (what a CUDA graph captures): the gradients, the batch's mean loss
        (fp32) and how many of its images the model got right."""
        with self.autocast:
            out = self.forward(x)
            loss = F.cross_entropy(out, y, label_smoothing=self.label_smoothing)
        loss.backward()
        return loss.detach().float(), (out.detach().argmax(1) == y).sum()

    def warm_up(self) -> None:
        """Compile before the first epoch, so compile time is reported apart from epoch times:
        one forward/backward on a batch, then the model's state is put back as it was."""
        saved = {k: v.clone() for k, v in self.model.state_dict().items()}
        x, y = next(iter(self.train_loader))
        start = time.perf_counter()
        self.model.train()
        with self.autocast:
            F.cross_entropy(self.forward(x), y).backward()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.load_state_dict(saved)  # BatchNorm statistics moved
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.compile_seconds = time.perf_counter() - start
        log.info(f"torch.compile: {self.compile_seconds:.1f} s (not counted in epoch times)")

    def evaluate(self, loader) -> dict:
        return evaluate(self.forward, loader, self.device, autocast=self.autocast, tta_flip=self.tta_flip)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def stop(self, reason: str) -> None:
        """End the fit after the current epoch (early stopping, a sweep's pruner); its state is checkpointed."""
        self.stop_reason = reason

    # -- the loop --------------------------------------------------------------------------------
    def fit(self, epochs: int, *, checkpoint_dir: str | Path | None = None, callbacks=()) -> list[dict]:
        """Train from ``self.epoch + 1`` to ``epochs``; return the per-epoch metrics.

        ``checkpoint_dir`` (where last.pt and best.pt go) and ``callbacks`` (added to the trainer's own
        for this fit, e.g. the run's MLflow logger) are what only the caller knows once its run exists.
        Each epoch's dict holds train_loss/acc, test_loss/acc (val_* too with a validation
        split), lr (the one the epoch trained with), epoch_time, images_per_sec, eval_time.
        """
        if checkpoint_dir is not None:
            self.checkpoint_dir = Path(checkpoint_dir)
        self.epochs = epochs  # what this fit trains to (callbacks may read it)
        listeners = [*self.callbacks, *callbacks]
        if self.compile and self.compile_seconds is None:
            self.warm_up()
        self.stopped_at = self.stop_reason = None
        for cb in listeners:
            cb.on_fit_start(self)
        try:
            self._epochs(epochs, listeners)
        except (KeyboardInterrupt, SystemExit):  # a signal or a cluster's requeue: keep the last complete epoch
            self._save_unsaved()
            raise
        if self.graph_step is not None:
            g = self.graph_step
            log.info(f"CUDA graph: {g.replays} steps replayed, {g.eager_steps} eager (warm-up, short batches)")
        for cb in listeners:
            cb.on_fit_end(self)
        return self.history

    def _epochs(self, epochs: int, listeners: list) -> None:
        for epoch in range(self.epoch + 1, epochs + 1):
            lr = self.lr
            metrics = {"epoch": epoch, **self.train_epoch(epoch), "lr": lr}
            start = time.perf_counter()
            test = self.evaluate(self.test_loader)
            metrics.update(test_loss=test["loss"], test_acc=test["acc"])
            if self.val_loader is not None:
                val = self.evaluate(self.val_loader)
                metrics.update(val_loss=val["loss"], val_acc=val["acc"])
            metrics["eval_time"] = time.perf_counter() - start
            self._step_scheduler(metrics)
            self._record(epoch, metrics)
            log.info(
                f"Epoch {epoch}/{epochs}: train loss {metrics['train_loss']:.4f} acc "
                f"{100 * metrics['train_acc']:.2f}%, lr {lr:.3g}, {metrics['epoch_time']:.1f} s "
                f"({metrics['images_per_sec']:.0f} img/s)"
            )
            log.info(
                f"Test set: Average loss: {test['loss']:.4f}, Accuracy: {test['correct']}/{test['total']} "
                f"({100 * test['acc']:.2f}%)"
            )
            self._checkpoint(epoch, epochs, improved=self.best["epoch"] == epoch)
            for cb in listeners:
                cb.on_epoch_end(self, metrics)
            if self.stop_reason:
                self.stopped_at = epoch
                self._save_unsaved()  # a stopped run can be resumed to its last epoch
                log.info(f"stopped after epoch {epoch}: {self.stop_reason}")
                return

    def _step_scheduler(self, metrics: dict) -> None:
        if self.scheduler is None or self.scheduler_interval != "epoch":
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(metrics[self.monitor or "test_loss"])
        else:
            self.scheduler.step()

    def _record(self, epoch: int, metrics: dict) -> None:
        self.epoch = epoch
        self.history.append(metrics)
        if metrics["test_acc"] > self.best["test_acc"]:
            self.best = {"test_acc": metrics["test_acc"], "epoch": epoch}
        if self.epochs_to_target is None and metrics["test_acc"] >= self.target_acc:
            self.epochs_to_target = epoch

    def summary(self) -> dict:
        """Run-level results: best test accuracy and its epoch, epochs and training seconds to the target accuracy."""
        out = {"best_test_acc": self.best["test_acc"], "best_epoch": self.best["epoch"]}
        if self.compile_seconds is not None:
            out["compile_time"] = self.compile_seconds
        if self.epochs_to_target is not None:
            out["epochs_to_target"] = self.epochs_to_target
            # Training seconds up to that epoch (evaluation and start-up not counted), from the
            # history, so it survives a resume.
            out["train_time_to_target"] = sum(
                m["epoch_time"] for m in self.history if m["epoch"] <= self.epochs_to_target
            )
        if self.history and "val_acc" in self.history[0]:
            out["best_val_acc"] = max(m["val_acc"] for m in self.history)
        if self.graph_step is not None:  # steps this fit replayed from the CUDA graph (0: it fell back to eager)
            out["cuda_graph_replays"] = self.graph_step.replays
        if self.device.type == "cuda":  # what this job held on its card at most (a sweep's memory check estimates it)
            out["max_memory_gib"] = torch.cuda.max_memory_reserved(self.device) / 2**30
        return out

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch": self.epoch,
            "history": self.history,
            "best": self.best,
            "epochs_to_target": self.epochs_to_target,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.history, self.best = state["epoch"], list(state["history"]), dict(state["best"])
        self.epochs_to_target = state["epochs_to_target"]
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def _checkpoint(self, epoch: int, epochs: int, improved: bool) -> None:
        if self.checkpoint_dir is None:
            return
        if improved:  # the weights alone: what explain.py and evaluation need, at half the size
            checkpoint.save(
                {"model": self.model.state_dict(), "epoch": epoch, "best": self.best}, self.checkpoint_dir / "best.pt"
            )
        if self.checkpoint_every and (epoch % self.checkpoint_every == 0 or epoch == epochs):
            checkpoint.save(self.state_dict(), self.checkpoint_dir / "last.pt")
            self._unsaved = None
        elif self.checkpoint_every:  # not on disk yet: kept in memory, written if the run is stopped
            self._unsaved = copy.deepcopy(self.state_dict())

    def _save_unsaved(self) -> None:
        if self.checkpoint_dir is not None and self._unsaved is not None:
            checkpoint.save(self._unsaved, self.checkpoint_dir / "last.pt")
            log.info(f"stopped: epoch {self._unsaved['epoch']} checkpointed for a resume")
            self._unsaved = None
