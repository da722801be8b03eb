"""trainer.cuda_graph: the static step a CUDA graph captures, on the CPU without the capture (which batches
replay the graph and which run eagerly, the static inputs and gradients, the same numbers as the eager
step, a resume), and the capture itself where a GPU is present."""

import pytest
import torch

from sweeplab.data import Augment, DeviceLoader, Split
from sweeplab.engine import Trainer, seed_everything
from sweeplab.graph_step import WARMUP_STEPS
from sweeplab.models import resnet18

CPU = torch.device("cpu")
N, BATCH = 200, 32  # 6 full batches and a short one of 8 per epoch


def _split(n: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n) % 10)


def make_trainer(device=CPU, cuda_graph=False, epochs=3, **kwargs) -> Trainer:
    """A seeded narrow ResNet-18 with momentum SGD and a one-cycle schedule stepped every batch (the
    learning rate and momentum change each step: the graph must not freeze them)."""
    seed_everything(0, deterministic=kwargs.pop("deterministic", False))
    common = dict(device=device, mean=[0.5] * 3, std=[0.25] * 3)
    train = DeviceLoader(_split(N, 1), BATCH, shuffle=True, augment=Augment(2, "reflect", True), seed=5, **common)
    test = DeviceLoader(_split(60, 2), 30, **common)
    model = resnet18(width=4).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=epochs * len(train))
    return Trainer(
        model,
        optimizer,
        train,
        test,
        device=device,
        scheduler=scheduler,
        scheduler_interval="step",
        cuda_graph=cuda_graph,
        progress=False,
        **kwargs,
    )


def _same_numbers(a: Trainer, b: Trainer) -> None:
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), name  # weights and BatchNorm statistics, bit for bit
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(a.optimizer.state[p]["momentum_buffer"], b.optimizer.state[q]["momentum_buffer"])
    keys = ("train_loss", "train_acc", "test_loss", "test_acc", "lr")
    assert [{k: m[k] for k in keys} for m in a.history] == [{k: m[k] for k in keys} for m in b.history]


def test_the_static_step_trains_exactly_as_the_eager_step():
    eager, graphed = make_trainer(), make_trainer(cuda_graph=True)
    eager.fit(3)
    graphed.fit(3)
    _same_numbers(eager, graphed)
    step = graphed.graph_step
    # Warm-up (eager), then every full batch through the static step; the short last batch of each
    # epoch eagerly: 3 epochs x (6 full + 1 short).
    assert step.warmed == WARMUP_STEPS and step.shape[0] == (BATCH, 3, 32, 32)
    assert step.eager_steps == WARMUP_STEPS + 3 and step.replays == 3 * 6 - WARMUP_STEPS
    # The short batches' eager steps left the gradients in the tensors a replay writes.
    assert all(p.grad is g for p, g in zip(step.params, step.grads, strict=True))
    assert not step.capture and step.graph is None  # on a CPU nothing is captured
    assert graphed.summary()["cuda_graph_replays"] == step.replays and "cuda_graph_replays" not in eager.summary()


def test_the_eager_short_batch_keeps_the_gradients_the_graph_writes():
    """An eager step that dropped the gradients (zero_grad(set_to_none=True)) would leave the optimizer
    reading tensors no replay writes: the static step keeps them and zeroes them in place."""
    trainer = make_trainer(cuda_graph=True)
    trainer.fit(1)
    step = trainer.graph_step
    before = [g.clone() for g in step.grads]
    x, y = next(iter(trainer.train_loader))
    step(x[:5], y[:5])  # a short batch: eager
    assert all(p.grad is g for p, g in zip(step.params, step.grads, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(before, step.grads, strict=True))
    step(x, y)  # a full one: the static inputs take the batch
    assert torch.equal(step.x, x) and torch.equal(step.y, y) and step.x.data_ptr() != x.data_ptr()


def test_a_run_resumed_from_its_checkpoint_continues_identically(tmp_path):
    straight = make_trainer(cuda_graph=True, epochs=4)
    straight.fit(4)
    first = make_trainer(cuda_graph=True, epochs=4, checkpoint_dir=tmp_path)
    first.fit(2)
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    resumed = make_trainer(cuda_graph=True, epochs=4, checkpoint_dir=tmp_path)
    resumed.load_state_dict(state)
    resumed.fit(4)
    _same_numbers(straight, resumed)
    assert resumed.graph_step.warmed == WARMUP_STEPS  # a fresh graph after the resume, warmed up again


def test_a_capture_that_fails_trains_on_eagerly(monkeypatch, caplog):
    """An operation a CUDA graph cannot hold: the run goes on eagerly, says so, and computes the same."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    def refuse(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    stream = SimpleNamespace(wait_stream=lambda other: None)
    monkeypatch.setattr(torch.cuda, "graph", refuse)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: None)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: nullcontext())
    eager, failing = make_trainer(), make_trainer(cuda_graph=True)
    failing.graph_step.capture = True  # as on CUDA, with the capture refused
    eager.fit(2)
    failing.fit(2)
    _same_numbers(eager, failing)
    step = failing.graph_step
    assert step.failed == "operation not permitted when stream is capturing" and step.replays == 0
    assert step.eager_steps == 2 * 7 and failing.summary()["cuda_graph_replays"] == 0
    assert "CUDA graph: the capture failed (operation not permitted" in caplog.text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="captures a CUDA graph: needs a GPU")
def test_on_cuda_the_captured_graph_trains_as_the_eager_step():
    cuda = torch.device("cuda")
    eager = make_trainer(cuda, cuda_graph=False, deterministic=True)
    graphed = make_trainer(cuda, cuda_graph=True, deterministic=True)
    eager.fit(3)
    graphed.fit(3)
    step = graphed.graph_step
    assert step.graph is not None and step.replays == 3 * 6 - WARMUP_STEPS and not step.failed
    for a, b in zip(eager.history, graphed.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["test_acc"] == pytest.approx(b["test_acc"], abs=0.02)
    for x, y in zip(eager.model.parameters(), graphed.model.parameters(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-4)
