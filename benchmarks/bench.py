"""Speed, measured side by side in one process, so a busy machine slows both sides alike.

    python benchmarks/bench.py                    # CPU ratios: data path, engine overhead, MLflow cost
    python benchmarks/bench.py --npz cifar10.npz  # the same on real images (default: random images)
    python benchmarks/bench.py --npz cifar10.npz --device cuda   # on a GPU: full ResNet-18, and (4)

Each comparison alternates its two sides for several rounds and compares their fastest rounds,
so a burst of load elsewhere cannot pass for a cost of either side. Targets (issue "Fast training
path"): (1) data path >= 10x a torchvision DataLoader with PIL transforms, (2) engine <= 1.10x a
bare PyTorch loop, (3) MLflow logging <= 1.02x epochs without it. (4), by default on a GPU only,
trains the baseline and fast recipes as train.py composes them (experiment=baseline / fast, no MLflow) on
the real data and prints train images/s, seconds per epoch and the training time to 88% test
accuracy; ``--max-epochs`` cuts them short, ``--override`` changes their config.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sweeplab import tracking
from sweeplab.data import Augment, DeviceLoader, Split, load_dataset
from sweeplab.engine import Trainer
from sweeplab.models import resnet18

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def images(args) -> Split:
    if args.npz:
        return load_dataset(".", args.npz, train_limit=args.images).train
    g = torch.Generator().manual_seed(0)
    return Split(
        torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g),
        torch.randint(0, 10, (args.images,), generator=g),
    )


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def side_by_side(a, b, rounds: int) -> tuple[float, float, float]:
    """Fastest seconds of a and of b over alternating rounds, and their ratio b/a.

    Load from elsewhere only ever adds time, so the fastest round of each side is the closest to
    its own cost; alternating the sides exposes both to the same spells of load.
    """
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(timed(a))
        tb.append(timed(b))
    return min(ta), min(tb), min(tb) / min(ta)


def augmented_loader(split: Split, batch: int, device) -> DeviceLoader:
    """The on-device training data path with the baseline's augmentation (pad 2 reflect, crop, flip)."""
    return DeviceLoader(split, batch, device, MEAN, STD, augment=Augment(2, "reflect", True), shuffle=True)


def model_and_batches(split: Split, device, batch: int, width: int, steps: int):
    """``steps`` precomputed training batches, a seeded ResNet-18 and its SGD optimizer."""
    batches = [b for _, b in zip(range(steps), augmented_loader(split, batch, device))]
    torch.manual_seed(0)
    model = resnet18(width=width).to(device)
    return batches, model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


class Batches:
    """The same precomputed batches every epoch, shaped like a DeviceLoader for the Trainer."""

    def __init__(self, batches):
        self.batches = batches
        self.labels = torch.cat([y for _, y in batches])

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)

    def set_epoch(self, epoch):
        pass


def bench_data(split: Split, device, batch: int, rounds: int) -> float:
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    hwc = split.images.permute(0, 2, 3, 1).numpy()
    pil = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=2, padding_mode="reflect"),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )

    class PILSet(Dataset):
        def __len__(self):
            return len(hwc)

        def __getitem__(self, i):
            return pil(Image.fromarray(hwc[i])), int(split.labels[i])

    baseline = DataLoader(PILSet(), batch_size=batch, shuffle=True, num_workers=0)
    ours = augmented_loader(split, batch, device)

    def drain(loader):
        def run():
            for _ in loader:
                pass
            if device.type == "cuda":
                torch.cuda.synchronize()

        return run

    t_ours, t_base, ratio = side_by_side(drain(ours), drain(baseline), rounds)
    n = len(split)
    print(
        f"(1) data path: on-device {n / t_ours:,.0f} img/s vs DataLoader+PIL {n / t_base:,.0f} img/s "
        f"-> {ratio:.1f}x faster  [target >= 10x]"
    )
    return ratio


def bench_engine(split: Split, device, batch: int, width: int, steps: int, rounds: int) -> float:
    batches, model, opt = model_and_batches(split, device, batch, width, steps)

    def bare():
        model.train()
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    trainer = Trainer(model, opt, Batches(batches), None, device=device, progress=False)
    bare()  # warm-up
    t_bare, t_ours, ratio = side_by_side(bare, lambda: trainer.train_epoch(1), rounds)
    print(
        f"(2) training step: engine {steps * batch / t_ours:,.0f} img/s vs bare loop "
        f"{steps * batch / t_bare:,.0f} img/s -> overhead {ratio:.3f}x  [target <= 1.10x]"
    )
    return ratio


class TimedLogger(tracking.MlflowLogger):
    """The MLflow callback, timing how long each hook holds up the training loop."""

    def __init__(self, run_id: str):
        super().__init__(run_id)
        self.seconds = {"on_fit_start": 0.0, "on_epoch_end": 0.0, "on_fit_end": 0.0}

    def _timed(self, hook, *args):
        start = time.perf_counter()
        getattr(super(), hook)(*args)
        self.seconds[hook] += time.perf_counter() - start

    def on_fit_start(self, trainer):
        self._timed("on_fit_start", trainer)

    def on_epoch_end(self, trainer, metrics):
        self._timed("on_epoch_end", trainer, metrics)

    def on_fit_end(self, trainer):
        self._timed("on_fit_end", trainer)


def bench_mlflow(split: Split, device, batch: int, width: int, steps: int, rounds: int, epochs: int) -> float:
    """``Trainer.fit`` with the MLflow callback vs without, in one open run of a SQLite store: each
    epoch's metrics and, once per fit, the wait for queued writes and the run-level summary.

    Two sides this close differ by less than the run-to-run spread of a shared machine, so it
    also measures the cost directly: the time the callback holds up the loop, plus the time the
    store takes to write an epoch's metrics (done in MLflow's logging thread: an upper bound of
    what it takes from training), against the epoch time without logging.
    """

    batches, model, opt = model_and_batches(split, device, batch, width, steps)
    test = Batches(batches[:2])
    with tempfile.TemporaryDirectory() as tmp:
        from omegaconf import OmegaConf

        experiment = tracking.setup(OmegaConf.create({"uri": None, "store_dir": tmp, "experiment": "bench"}))
        with tracking.open_run(experiment) as run_id:
            logger = TimedLogger(run_id)
            logged = Trainer(model, opt, Batches(batches), test, device=device, progress=False, callbacks=[logger])
            bare = Trainer(model, opt, Batches(batches), test, device=device, progress=False)

            def fit(trainer):
                def run_epochs():
                    trainer.epoch = 0
                    trainer.history.clear()
                    trainer.fit(epochs)

                return run_epochs

            t_bare, t_logged, ratio = side_by_side(fit(bare), fit(logged), rounds)
            metrics = {k: v for k, v in logged.history[-1].items() if k != "epoch"}
            write = statistics.median(timed(lambda: tracking.log_metrics(metrics, 1, run_id)) for _ in range(10))
    per_epoch = logger.seconds["on_epoch_end"] / (rounds * epochs) + write  # the logged side ran `rounds` fits
    per_fit = (logger.seconds["on_fit_start"] + logger.seconds["on_fit_end"]) / rounds
    direct = 1 + (per_epoch + per_fit / epochs) / (t_bare / epochs)
    print(
        f"(3) MLflow logging: {epochs} epochs with it {t_logged:.2f} s vs without {t_bare:.2f} s -> {ratio:.4f}x "
        f"side by side; directly: {1000 * per_epoch:.1f} ms per epoch (callback + the store's write) and "
        f"{1000 * per_fit:.1f} ms per fit, against {t_bare / epochs:.2f} s epochs -> {direct:.4f}x  [target <= 1.02x]"
    )
    return ratio


def bench_recipes(recipes: list[str], device, npz: str | None, max_epochs: int | None, overrides: list[str]) -> None:
    """Each recipe as train.py composes it, trained without MLflow from a fresh seeded model."""
    from hydra import compose, initialize_config_dir

    from sweeplab import build
    from sweeplab.checks import check_run

    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        for recipe in recipes:
            cfg = compose(
                "train",
                overrides=[
                    f"experiment={recipe}",
                    f"trainer.device={device}",
                    "trainer.progress=false",
                    *([f"data.npz={npz}"] if npz else []),
                    *overrides,
                ],
            )
            check_run(cfg)
            trainer = build.build_run(cfg).trainer  # as train.py builds it, seeded
            epochs = min(cfg.trainer.epochs, max_epochs or cfg.trainer.epochs)
            start = time.perf_counter()
            history = trainer.fit(epochs)
            wall = time.perf_counter() - start
            summary = trainer.summary()
            speed = statistics.median(m["images_per_sec"] for m in history)
            per_epoch = statistics.median(m["epoch_time"] for m in history)
            train_s = sum(m["epoch_time"] for m in history)
            if "epochs_to_target" in summary:
                reached = summary["epochs_to_target"]
                wall_to = sum(m["epoch_time"] + m["eval_time"] for m in history[:reached])
                target = (
                    f"{100 * cfg.target_acc:g}% at epoch {reached} after {summary['train_time_to_target']:.1f} s "
                    f"of training ({wall_to:.1f} s with evaluation)"
                )
            else:
                target = f"{100 * cfg.target_acc:g}% not reached"
            compiled = f", compile {summary['compile_time']:.1f} s apart" if "compile_time" in summary else ""
            print(
                f"(4) {recipe}: {epochs} of {cfg.trainer.epochs} epochs, {speed:,.0f} train img/s, "
                f"{per_epoch:.2f} s/epoch (medians); {target}; best test accuracy "
                f"{100 * summary['best_test_acc']:.2f}% (epoch {summary['best_epoch']}); {epochs} epochs: "
                f"{train_s:.1f} s training, {wall:.1f} s with evaluation{compiled}"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--npz", help="a cifar10.npz copy (default: random uint8 images; (4) then downloads CIFAR-10)")
    p.add_argument("--images", type=int, default=5000, help="images for the data-path comparison")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--width", type=int, help="ResNet-18 width for (2) and (3) (default: 64 = full on a GPU, 16 on CPU)")
    p.add_argument("--steps", type=int, default=12, help="training steps per round in (2) and (3)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=3, help="epochs of each fit in (3)")
    p.add_argument("--recipes", help="comma-separated experiments for (4) (default: baseline,fast on a GPU, else none)")
    p.add_argument("--max-epochs", type=int, help="train each recipe at most this many epochs (default: all)")
    p.add_argument("--override", nargs="*", default=[], help="Hydra overrides for the recipes in (4)")
    args = p.parse_args()
    device = torch.device(args.device)
    width = args.width or (64 if device.type == "cuda" else 16)
    default = "baseline,fast" if device.type == "cuda" else ""
    recipes = [r for r in (args.recipes if args.recipes is not None else default).split(",") if r]
    split = images(args)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(
        f"sweeplab benchmark: {device} ({where}), "
        f"torch {torch.__version__}, {'real' if args.npz else 'random'} images, batch 128, ResNet-18 width {width}"
    )
    bench_data(split, device, 128, args.rounds)
    bench_engine(split, device, 128, width, args.steps, args.rounds)
    bench_mlflow(split, device, 128, width, args.steps, args.rounds, args.epochs)
    if recipes:
        bench_recipes(recipes, device, args.npz, args.max_epochs, args.override)


if __name__ == "__main__":
    main()
