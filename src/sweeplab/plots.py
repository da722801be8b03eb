"""Matplotlib figures: training curves, LR-finder plots, image grids."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only: never open a window
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

CURVES = (("test_acc", "Test accuracy"), ("test_loss", "Test loss"),
          ("train_acc", "Train accuracy"), ("train_loss", "Train loss"))


def curves_figure(histories: dict[str, list[dict]], title: str | None = None) -> Figure:
    """The seed's 2x2 figure: test acc/loss, train acc/loss per epoch, one line per run."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for ax, (key, name) in zip(axes.flat, CURVES):
        for label, history in histories.items():
            points = [(m["epoch"], m[key]) for m in history if key in m]
            if points:
                xs, ys = zip(*points)
                if key.endswith("_acc"):
                    ys = [100 * y for y in ys]
                ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("%" if key.endswith("_acc") else "loss")
        ax.grid(alpha=0.3)
    if len(histories) > 1 or title:
        axes.flat[0].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def lr_finder_run_figure() -> Figure:
    """An empty figure with one axes for torch-lr-finder's ``LRFinder.plot(ax=...)`` to draw into."""
    fig, _ = plt.subplots(figsize=(7, 5))
    return fig


def finish_lr_finder_run_figure(fig: Figure, path, title: str, suggestion: float | None = None) -> None:
    """Title, grid and a dotted line at the suggested lr (the library marks its point), then save."""
    ax = fig.axes[0]
    if suggestion is not None:
        ax.axvline(suggestion, color="red", linestyle=":", linewidth=1)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save(fig, path)


def lr_finder_summary_figure(runs: dict[str, dict], log_lr: bool = True, skip_start: int = 0, skip_end: int = 0,
                             title: str | None = None) -> Figure:
    """Every LR range test's loss over lr in one axes, each suggestion marked on its curve.

    ``runs``: label -> {"lr": [...], "loss": [...], "suggestion": float | None}; the first
    ``skip_start`` and last ``skip_end`` points are left out, as the suggestion leaves them out.
    """
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, run in runs.items():
        lrs, losses = list(run["lr"]), list(run["loss"])
        if run.get("suggestion") is not None:
            end = len(lrs) - skip_end
            lrs, losses = lrs[skip_start:end], losses[skip_start:end]
        if not lrs:
            continue
        suggestion = run.get("suggestion")
        name = f"{label}: {suggestion:.3g}" if suggestion is not None else f"{label}: no suggestion"
        (line,) = ax.plot(lrs, losses, label=name)
        if suggestion is not None:
            i = min(range(len(lrs)), key=lambda k: abs(lrs[k] - suggestion))
            ax.scatter([lrs[i]], [losses[i]], s=60, color=line.get_color(), edgecolor="black", zorder=3)
    if log_lr:
        ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    ax.set_title(title or "LR range test")
    fig.tight_layout()
    return fig


def save(fig: Figure, path) -> None:
    fig.savefig(path, dpi=100)
    plt.close(fig)
