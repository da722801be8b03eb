"""The training step's forward, loss and backward, captured once as a CUDA graph and replayed.

Why: at batch 128 a ResNet-18 step is hundreds of small kernels, and Python launching them one by one
is what bounds it (7.5 ms a step on an H200 with the card mostly waiting, docs/benchmarks.md); a graph
replays them all with one launch. Why a graph by hand (``torch.cuda.graph`` around a static step over
the on-device batches) rather than ``torch.compile(mode="reduce-overhead")``: no compile time (tens of
seconds in every job of a sweep), any model the config names, and exactly the eager step's kernels, so a
graphed run computes what an eager one does and a checkpoint moves freely between the two.

Outside the graph, eagerly: the optimizer's step and the scheduler's. Schedules change the learning rate
(one-cycle also the momentum) every step as Python numbers, which a capture would freeze, and Adam counts
its steps on the host unless built capturable; the optimizer's step is a few multi-tensor kernels,
queued while the graph still runs on the card, so it does not make the step launch-bound again.

Which batches: every batch of the first batch's shape (all the full ones) replays the graph, after
``warmup`` eager steps (the documented warm-up on a side stream: cuDNN chooses its kernels, the optimizer
makes its state; they are real training steps); a batch of another shape (an epoch's last, short one)
runs eagerly. A replay overwrites the gradient tensors it captured, which are the ones the optimizer
reads: an eager step therefore zeroes them in place instead of dropping them.

``capture=False`` runs the very same static step without a graph (on a CPU): what the tests check.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # eager steps before the capture, as torch's CUDA graph examples do


class GraphStep:
    """``step(x, y)`` -> what ``forward_backward(x, y)`` returns, with the gradients in the parameters'
    ``.grad``; replayed from a CUDA graph where the batch has the captured shape."""

    def __init__(self, forward_backward, params, *, capture: bool, warmup: int = WARMUP_STEPS):
        self.forward_backward = forward_backward
        self.params = [p for p in params if p.requires_grad]
        self.capture, self.warmup = capture, warmup
        self.shape: tuple | None = None  # (x's, y's): the batches the graph takes
        self.warmed = 0  # eager warm-up steps done
        self.x = self.y = None  # the static inputs each replay reads
        self.grads: list | None = None  # the gradient tensors each replay writes; None until captured
        self.graph = None
        self.outputs = None  # the static outputs each replay writes
        self.replays = self.eager_steps = 0
        self.failed: str | None = None  # why the capture failed: every step then runs eagerly

    @property
    def captured(self) -> bool:
        return self.grads is not None

    def takes(self, x: torch.Tensor, y: torch.Tensor) -> bool:
        """Whether this batch goes through the graph (once warmed up): it has the first batch's shape."""
        if self.failed:
            return False
        if self.shape is None:
            self.shape = (x.shape, y.shape)
        return (x.shape, y.shape) == self.shape

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        if not self.takes(x, y):
            return self.eager(x, y)
        if not self.captured:
            if self.warmed < self.warmup:
                self.warmed += 1
                with self._side_stream(x.device):
                    return self.eager(x, y)
            return self._capture(x, y)
        self.x.copy_(x)
        self.y.copy_(y)
        self.replays += 1
        if self.graph is not None:
            self.graph.replay()
            return self.outputs
        for g in self.grads:  # what a replay does: the same gradient tensors, overwritten
            if g is not None:
                g.zero_()
        return self.forward_backward(self.x, self.y)

    def eager(self, x: torch.Tensor, y: torch.Tensor):
        """One step without the graph; once captured, the graph's gradient tensors stay the parameters'."""
        self.eager_steps += 1
        for p in self.params:
            if not self.captured:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()
        return self.forward_backward(x, y)

    def _capture(self, x: torch.Tensor, y: torch.Tensor):
        """Capture the step on static copies of this batch, then run it (a capture alone computes nothing)."""
        self.x, self.y = x.clone(), y.clone()  # clone keeps the memory format (channels_last)
        for p in self.params:
            p.grad = None  # so that the step allocates its gradients where the graph keeps them
        self.replays += 1
        if not self.capture:
            outputs = self.forward_backward(self.x, self.y)
            self.grads = [p.grad for p in self.params]
            return outputs
        self.graph = torch.cuda.CUDAGraph()
        try:  # on the batch's own card, whatever the current device of the process
            with torch.cuda.graph(self.graph, stream=torch.cuda.Stream(x.device)):
                self.outputs = self.forward_backward(self.x, self.y)
        except RuntimeError as err:  # an operation a graph cannot hold: train on, eagerly, and say so
            self.failed, self.graph, self.replays = str(err).splitlines()[0], None, self.replays - 1
            log.warning(f"CUDA graph: the capture failed ({self.failed}); every step runs eagerly")
            return self.eager(x, y)
        self.grads = [p.grad for p in self.params]
        self.graph.replay()
        return self.outputs

    @contextmanager
    def _side_stream(self, device: torch.device):
        """Warm-up steps run on a side stream, as torch's CUDA graph documentation requires."""
        if not self.capture:
            yield
            return
        main = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            yield
        main.wait_stream(side)
