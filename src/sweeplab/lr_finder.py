"""LR range test: torch-lr-finder's ``LRFinder`` over the device-resident data, N independent runs,
their suggestions, and the sweep command that trains with them.

The range test, its smoothing, divergence stop, ``reset()`` and the suggestion (steepest descent of
the smoothed loss, via ``LRFinder.plot``) are the library's. What lives here: iterators that feed it
our ``DeviceLoader`` batches (already on the device, augmented and normalized), a fresh model and
optimizer per run, the files, the MLflow run, and the one-line messages for a test that cannot
suggest anything.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import shlex
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from sweeplab import build, job, plots, tracking  # plots first: the Agg backend before torch-lr-finder imports pyplot
from sweeplab.checks import check_lr_finder, min_steps, val_source
from sweeplab.data import DeviceLoader, Split
from sweeplab.engine import seed_everything
from sweeplab.errors import RunFailed

with warnings.catch_warnings():  # tqdm.autonotebook warns that it is experimental
    warnings.simplefilter("ignore")
    from torch_lr_finder import LRFinder, TrainDataLoaderIter, ValDataLoaderIter

log = logging.getLogger(__name__)


class NoSuggestionError(RunFailed):
    """No run produced a suggestion (every one diverged or stopped too early)."""


# -- the library's data iterators over our device-resident loaders --------------------------------
class _Epochs:
    """A DeviceLoader that starts a new epoch (fresh order and augmentation) on every pass."""

    def __init__(self, loader: DeviceLoader):
        self.loader, self.passes = loader, 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.loader.set_epoch(self.passes)
        self.passes += 1
        return iter(self.loader)


class DeviceTrainIter(TrainDataLoaderIter):
    """``TrainDataLoaderIter`` over a DeviceLoader: its (x, y) batches already live on the device.

    The library's ``auto_reset`` restarts the loader when a pass ends; each restart is a new epoch,
    so a range test longer than one pass does not replay the same batches.
    """

    def __init__(self, loader: DeviceLoader):
        super().__init__(_Epochs(loader), auto_reset=True)

    @property
    def dataset(self):
        return self.data_loader.loader.labels


class DeviceValIter(ValDataLoaderIter):
    """``ValDataLoaderIter`` over a DeviceLoader; ``dataset`` only needs a length (the library divides
    the summed loss by it)."""

    @property
    def dataset(self):
        return self.data_loader.labels


# -- one range test ---------------------------------------------------------------------------------
@dataclass
class RunResult:
    index: int
    seed: int
    lrs: list[float]
    losses: list[float]
    suggestion: float | None  # the library's, unrounded
    seconds: float
    stopped_early: bool  # fewer steps than num_iter: the loss diverged (or became NaN)
    message: str | None = None  # why there is no suggestion
    at_edge: bool = False  # the suggestion is the first or last lr the rule looks at
    files: dict[str, Path] = field(default_factory=dict)  # figure, history


@contextlib.contextmanager
def _library_output(progress: bool):
    """torch-lr-finder prints remarks to stdout and draws a tqdm bar on stderr: keep stdout for our own
    lines (the last one is the sweep command), its remarks as debug log lines, and its bar on stderr
    only where progress bars are wanted (else stderr goes to a buffer that is dropped). The library
    takes no option for either; redirecting the streams is Python's public way."""
    remarks = io.StringIO()
    bar = contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO())
    try:
        with contextlib.redirect_stdout(remarks), bar, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*get_last_lr.*")  # the library reads get_lr()
            yield remarks
    finally:
        for line in remarks.getvalue().splitlines():
            log.debug(f"torch-lr-finder: {line}")


def _amp(precision: str, device: torch.device) -> dict:
    if precision != "bf16":
        return {}
    # bf16 needs no loss scaling; the library insists on a scaler object, a disabled one passes through.
    return dict(
        amp_backend="torch",
        amp_config={"device_type": device.type, "dtype": torch.bfloat16},
        grad_scaler=torch.amp.GradScaler(device.type, enabled=False),
    )


def _finite_prefix(history: dict) -> dict:
    """The history up to its first non-finite loss: the library's divergence test cannot see NaN."""
    n = next((i for i, v in enumerate(history["loss"]) if not math.isfinite(v)), len(history["loss"]))
    return {"lr": list(history["lr"][:n]), "loss": list(history["loss"][:n])}


def range_test(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion,
    train_loader: DeviceLoader,
    val_loader: DeviceLoader | None,
    lr_finder: DictConfig,
    *,
    device: torch.device,
    precision: str = "fp32",
    progress: bool = False,
    ax=None,
) -> tuple[dict, float | None, str | None]:
    """One LRFinder.range_test; returns (history, suggestion or None, why not).

    The model and optimizer are restored with ``LRFinder.reset()`` afterwards, so the objects passed
    in leave exactly as they came. With ``ax`` the library draws the curve and marks its suggestion.
    """
    finder = LRFinder(model, optimizer, criterion, device=device, **_amp(precision, device))
    try:
        with _library_output(progress):
            finder.range_test(
                DeviceTrainIter(train_loader),
                val_loader=DeviceValIter(val_loader) if val_loader is not None else None,
                start_lr=float(lr_finder.start_lr),
                end_lr=float(lr_finder.end_lr),
                num_iter=int(lr_finder.num_iter),
                step_mode=lr_finder.step_mode,
                smooth_f=float(lr_finder.smooth_f),
                diverge_th=float(lr_finder.diverge_th),
            )
        raw = finder.history
        finder.history = history = _finite_prefix(raw)
        steps, need = len(history["lr"]), min_steps(lr_finder)
        log_lr = lr_finder.step_mode == "exp"
        if steps < need:
            at = f" at lr {raw['lr'][len(raw['lr']) - 1]:.3g}" if raw["lr"] else ""
            why = "became NaN" if len(raw["loss"]) > steps else "diverged"
            message = (
                f"the loss {why}{at} after {steps} of {lr_finder.num_iter} steps, too early for a suggestion "
                f"(it needs {need}): lower lr_finder.end_lr or raise lr_finder.diverge_th"
            )
            if ax is not None and steps:
                with _library_output(progress):
                    finder.plot(skip_start=0, skip_end=0, log_lr=log_lr, ax=ax, suggest_lr=False)
            return history, None, message
        if ax is None:
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots()
            plt.close(fig)
        with _library_output(progress):
            _, suggestion = finder.plot(
                skip_start=int(lr_finder.skip_start),
                skip_end=int(lr_finder.skip_end),
                log_lr=log_lr,
                ax=ax,
                suggest_lr=True,
            )
        return history, float(suggestion), None
    finally:
        finder.reset()


def at_window_edge(lrs: list[float], suggestion: float | None, skip_start: int, skip_end: int) -> bool:
    """Whether the suggestion is the first or last lr of the window the library's rule looks at: then
    the loss did not clearly fall inside the range, and the 'steepest descent' is only its least rise."""
    window = lrs[skip_start : len(lrs) - skip_end]
    return suggestion is not None and bool(window) and suggestion in (window[0], window[-1])


# -- formatting and the sweep command ------------------------------------------------------------------
def format_lr(value: float) -> str:
    """3 significant digits in the baseline's style: 0.01 -> 1e-2, 0.009326 -> 9.33e-3."""
    mantissa, exponent = f"{value:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def sweep_command(values: list[str], overrides: list[str]) -> str:
    """``python train.py -m <the experiment's overrides> optimizer.lr=a,b``.

    The finder's own overrides (lr_finder*), optimizer.lr and the ones that only say where things
    run (store, paths, data file, device) are left out; model, optimizer, data limits, batch size and
    so on are kept, since the suggestion is only valid for them.
    """

    keep = [o for o in job.experiment_overrides(overrides, drop=("lr_finder",)) if job.key_of(o) != "optimizer.lr"]
    return " ".join(["python train.py -m", *(shlex.quote(o) for o in keep), "optimizer.lr=" + ",".join(values)])


# -- the command ---------------------------------------------------------------------------------------
def _loaders(cfg: DictConfig, data, device: torch.device, seed: int):
    """The train loader as train.py builds it, and the loader of the validation source (or None)."""
    train = build.build_loaders(cfg, data, device, seed)[0]
    source, subset = val_source(cfg.lr_finder), cfg.lr_finder.val_subset
    if source == "none":
        return train, None
    split = data.test if source == "test" else data.val
    if subset and subset < len(split):
        split = Split(split.images[:subset], split.labels[:subset])
    return train, build.eval_loader(cfg, split, device, data=data)


def _write_history(result: RunResult, path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "lr", "loss"])
        writer.writerows((i, repr(lr), repr(loss)) for i, (lr, loss) in enumerate(zip(result.lrs, result.losses)))


def find(cfg: DictConfig, out_dir: Path | None = None) -> dict:
    """Run ``lr_finder.runs`` range tests, write and log their results; return the suggestions file's content.

    Raises ConfigError (before any work or MLflow run) for bad input and NoSuggestionError when no
    run could suggest an lr.
    """
    check_lr_finder(cfg)
    tracking.protect(cfg)
    lr_finder, trainer = cfg.lr_finder, cfg.trainer
    device = build.device_of(cfg)
    data = build.load_data(cfg, device)
    settings = dict(
        device=device,
        precision=build.precision_of(cfg, device),
        progress=sys.stderr.isatty() if trainer.progress is None else bool(trainer.progress),
    )
    out_dir = Path(out_dir or job.output_dir() or tempfile.mkdtemp(prefix="lr_finder-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    train_loader, val_loader = _loaders(cfg, data, device, int(lr_finder.seed))
    experiment_id = tracking.setup(cfg.tracking)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=float(trainer.label_smoothing))
    overrides = job.overrides()
    tags = {**tracking.tags_for(trainer.seed, overrides, None, tracking.git_state()), "sweeplab.task": "lr_finder"}
    val_desc = "training batch" if val_loader is None else f"{len(val_loader.labels)} {val_source(lr_finder)} images"
    log.info(
        f"LR range test: {lr_finder.runs} run(s), lr {lr_finder.start_lr:g} .. {lr_finder.end_lr:g} in "
        f"{lr_finder.num_iter} {lr_finder.step_mode} steps on {device}, loss of the {val_desc} after each step"
    )

    results: list[RunResult] = []
    with tracking.open_run(experiment_id, "lr_finder " + job.run_name(overrides), tags=tags) as run_id:
        tracking.log_params(tracking.flatten(cfg))
        tracking.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config/resolved.yaml")
        tracking.log_text("\n".join(overrides) + "\n", "config/overrides.txt")
        for i in range(lr_finder.runs):
            seed = int(lr_finder.seed) + i
            seed_everything(seed, trainer.deterministic)
            model = build.build_model(cfg, device, data.num_classes)  # never the objects a training run uses
            optimizer = build.build_optimizer(cfg, model)
            train_loader.seed = seed
            result = _one_run(
                i, seed, model, optimizer, criterion, train_loader, val_loader, lr_finder, out_dir, **settings
            )
            del model, optimizer
            _log_run(result, lr_finder, run_id)
            results.append(result)

        values = list(dict.fromkeys(format_lr(r.suggestion) for r in results if r.suggestion is not None))
        command = sweep_command(values, overrides) if values else None
        summary = _summary(cfg, results, values, command, out_dir)
        _write_outputs(cfg, results, summary, out_dir)
        names = [
            "suggestions.yaml",
            "history.json",
            "lr_finder_summary.png",
            *(p.name for r in results for p in r.files.values()),
        ]
        tracking.log_files([out_dir / name for name in names], "lr_finder")
        if not values:
            raise NoSuggestionError(f"no suggestion from {len(results)} run(s): {results[0].message}")
        tracking.log_params({"suggested_lrs": ",".join(values)})
        tracking.set_tags({"sweeplab.next_command": command})
    log.info(
        f"suggestions {', '.join(values)} written to {out_dir / 'suggestions.yaml'}; "
        f"MLflow run {run_id} (experiment {cfg.tracking.experiment}). Sweep them with:"
    )
    return summary


def _one_run(
    i: int,
    seed: int,
    model,
    optimizer,
    criterion,
    train_loader,
    val_loader,
    lr_finder: DictConfig,
    out_dir: Path,
    **settings,
) -> RunResult:
    """One range test with its figure (the library's plot, titled) and history file."""
    fig = plots.lr_finder_run_figure()
    started = time.perf_counter()
    history, suggestion, message = range_test(
        model, optimizer, criterion, train_loader, val_loader, lr_finder, ax=fig.axes[0], **settings
    )
    seconds = time.perf_counter() - started
    result = RunResult(
        i,
        seed,
        history["lr"],
        history["loss"],
        suggestion,
        seconds,
        stopped_early=len(history["lr"]) < lr_finder.num_iter,
        message=message,
        at_edge=at_window_edge(history["lr"], suggestion, lr_finder.skip_start, lr_finder.skip_end),
    )
    verdict = f"suggested lr {format_lr(suggestion)}" if suggestion is not None else "no suggestion"
    title = f"run {i} (seed {seed}): {verdict}"
    result.files["figure"] = out_dir / f"run{i}_lr_finder.png"
    plots.finish_lr_finder_run_figure(fig, result.files["figure"], title, suggestion)
    result.files["history"] = out_dir / f"run{i}_history.csv"
    _write_history(result, result.files["history"])
    return result


def _log_run(r: RunResult, lr_finder: DictConfig, run_id: str) -> None:
    """Console lines and MLflow metrics of one range test (its loss curve as run<i>_loss, step = iteration)."""
    tracking.log_series(f"run{r.index}_loss", r.losses, run_id)
    tracking.log_metrics({f"run{r.index}_seconds": r.seconds, f"run{r.index}_suggested_lr": r.suggestion}, 0, run_id)
    tracking.log_metrics({"suggested_lr": r.suggestion}, r.index, run_id)
    name = f"run {r.index} (seed {r.seed})"
    if r.message:
        log.warning(f"{name}: {r.message}")
        return
    log.info(
        f"{name}: {len(r.lrs)} steps in {r.seconds:.1f} s"
        f"{' (stopped early: the loss diverged)' if r.stopped_early else ''}, "
        f"suggested lr {r.suggestion:.4g} -> {format_lr(r.suggestion)}"
    )
    if r.at_edge:
        log.warning(
            f"{name}: the suggestion is at the edge of the window the rule looks at (steps "
            f"{lr_finder.skip_start}..{len(r.lrs) - lr_finder.skip_end - 1}): the loss did not fall inside the range; "
            f"try more steps (lr_finder.num_iter), a lower lr_finder.start_lr or lr_finder.val=none"
        )


def _write_outputs(cfg: DictConfig, results: list[RunResult], summary: dict, out_dir: Path) -> None:
    """suggestions.yaml, history.json (every run) and the summary figure."""
    lr_finder = cfg.lr_finder
    with open(out_dir / "suggestions.yaml", "w") as f:
        f.write("# LR range test suggestions (find_lr.py). Sweep them with:\n")
        f.write(f"#   {summary['command']}\n" if summary["command"] else "#   (none: no run gave a suggestion)\n")
        yaml.safe_dump(summary, f, sort_keys=False, width=10_000)
    (out_dir / "history.json").write_text(
        json.dumps(
            [
                {"run": r.index, "seed": r.seed, "lr": r.lrs, "loss": r.losses, "suggested_lr": r.suggestion}
                for r in results
            ]
        )
    )
    curves = {
        f"run {r.index} (seed {r.seed})": {"lr": r.lrs, "loss": r.losses, "suggestion": r.suggestion} for r in results
    }
    name = f"{cfg.model._target_.rsplit('.', 1)[-1]}, {cfg.optimizer._target_.rsplit('.', 1)[-1]}"
    fig = plots.lr_finder_summary_figure(
        curves,
        log_lr=lr_finder.step_mode == "exp",
        skip_start=lr_finder.skip_start,
        skip_end=lr_finder.skip_end,
        title=f"LR range test: {name}",
    )
    plots.save(fig, out_dir / "lr_finder_summary.png")


def _summary(cfg: DictConfig, results: list[RunResult], values: list[str], command: str | None, out_dir: Path) -> dict:
    lr_finder = cfg.lr_finder
    return {
        "command": command,
        "override": f"optimizer.lr={','.join(values)}" if values else None,
        "suggested_lrs": [float(v) for v in values],
        "runs": [
            {
                "run": r.index,
                "seed": r.seed,
                "suggested_lr": float(format_lr(r.suggestion)) if r.suggestion is not None else None,
                "suggested_lr_exact": r.suggestion,
                "at_edge": r.at_edge,
                "steps": len(r.lrs),
                "stopped_early": r.stopped_early,
                "seconds": round(r.seconds, 2),
                "message": r.message,
                **{k: p.name for k, p in r.files.items()},
            }
            for r in results
        ],
        "range_test": OmegaConf.to_container(lr_finder, resolve=True),
        "model": cfg.model._target_,
        "optimizer": cfg.optimizer._target_,
        "output_dir": str(out_dir),
    }


def run(cfg: DictConfig) -> dict:
    """The task behind find_lr.py: the range tests, then the sweep command as the last line printed."""
    summary = find(cfg)
    print(summary["command"], flush=True)
    return summary
