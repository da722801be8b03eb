"""Matplotlib figures: training curves, LR-finder plots, image grids."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # files only: never open a window
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

CURVES = (
    ("test_acc", "Test accuracy"),
    ("test_loss", "Test loss"),
    ("train_acc", "Train accuracy"),
    ("train_loss", "Train loss"),
)


def curves_figure(histories: dict[str, list[dict]], title: str | None = None, stopped=()) -> Figure:
    """The baseline's 2x2 figure: test acc/loss, train acc/loss per epoch, one line per run. A
    history that also holds ``<key>_std`` (a configuration's mean over seeds) gets a band of ± that;
    the runs labelled in ``stopped`` (a sweep's pruned jobs) are dashed and end in a cross."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for ax, (key, name) in zip(axes.flat, CURVES):
        scale = 100 if key.endswith("_acc") else 1
        for label, history in histories.items():
            points = [(m["epoch"], m[key]) for m in history if key in m]
            if not points:
                continue
            xs, ys = zip(*points)
            line = ax.plot(xs, [scale * y for y in ys], marker="." if len(xs) < 30 else None, label=label)[0]
            if label in stopped:
                line.set_linestyle("--")
                ax.plot(xs[-1:], [scale * ys[-1]], marker="x", markersize=9, color=line.get_color())
            band = [(m["epoch"], m[key], m[f"{key}_std"]) for m in history if f"{key}_std" in m]
            if band:
                xs, ys, sd = zip(*band)
                low = [scale * (y - s) for y, s in zip(ys, sd)]
                high = [scale * (y + s) for y, s in zip(ys, sd)]
                ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
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


def _lr_label(x: float, _pos=None) -> str:
    """1, 2 and 5 times a power of ten, written like the sweep command (1e-2, 2e-2, 5e-2); others blank."""
    if x <= 0:
        return ""
    exponent = math.floor(math.log10(x) + 1e-9)
    mantissa = x / 10**exponent
    return (
        f"{round(mantissa)}e{exponent}"
        if round(mantissa) in (1, 2, 5) and abs(mantissa - round(mantissa)) < 1e-6
        else ""
    )


def _lr_axis(ax) -> None:
    """A log lr axis without crowded minor-tick labels (only decades over more than 3 decades); call after plotting."""
    ax.set_xscale("log")
    low, high = ax.get_xlim()
    ax.xaxis.set_major_formatter(FuncFormatter(_lr_label))
    wide = low > 0 and math.log10(high / low) > 3
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, pos: "" if wide else _lr_label(x, pos)))


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
    if ax.get_xscale() == "log":
        _lr_axis(ax)
    fig.tight_layout()
    save(fig, path)


def lr_finder_summary_figure(
    runs: dict[str, dict], log_lr: bool = True, skip_start: int = 0, skip_end: int = 0, title: str | None = None
) -> Figure:
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
        _lr_axis(ax)
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


# -- image grids (explain.py) ---------------------------------------------------------------------
TILE_INCHES = (2.0, 2.4)  # one titled image tile: width, height (the title takes two lines)
HEADER_INCHES = 0.6  # room for the figure's title above the tiles


def grid_figsize(rows: int, cols: int) -> tuple[float, float]:
    """The size of an image grid of rows x cols titled tiles; at save()'s 100 dpi, 100 px per inch."""
    return cols * TILE_INCHES[0], rows * TILE_INCHES[1] + HEADER_INCHES


def _grid(rows: int, cols: int, title: str | None):
    width, height = grid_figsize(rows, cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False)
    title_room, bottom = 0.45, 0.1  # inches: two lines of tile title, a margin below the last row
    axes_height = (height - HEADER_INCHES - title_room - bottom - (rows - 1) * title_room) / rows
    fig.subplots_adjust(
        left=0.02,
        right=0.98,
        bottom=bottom / height,
        top=1 - (HEADER_INCHES + title_room) / height,
        wspace=0.08,
        hspace=title_room / axes_height,
    )
    for ax in axes.flat:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize="medium", y=1 - 0.15 / height, va="top")
    return fig, axes


def image_grid_figure(images, titles, rows: int, cols: int, title: str | None = None) -> Figure:
    """HWC images (uint8 or float in [0, 1]) in a rows x cols grid, filled row by row, each titled."""
    fig, axes = _grid(rows, cols, title)
    for ax, image, name in zip(axes.flat, images, titles):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(name, fontsize="small")
    return fig


def image_heatmap_pairs_figure(images, heatmaps, titles, cols: int, title: str | None = None) -> Figure:
    """Each image beside its heat map (values in [0, 1]): ``cols`` pairs per row."""
    rows = max(1, -(-len(images) // cols))
    fig, axes = _grid(rows, 2 * cols, title)
    for i, (image, heat, name) in enumerate(zip(images, heatmaps, titles)):
        raw, cam = axes[i // cols, 2 * (i % cols)], axes[i // cols, 2 * (i % cols) + 1]
        raw.imshow(image, interpolation="nearest")
        raw.set_title(name, fontsize="small")
        cam.imshow(heat, cmap="jet", vmin=0.0, vmax=1.0, interpolation="bilinear")
        cam.set_title("heat map", fontsize="small")
    return fig


def confusion_figure(matrix, classes, title: str | None = None) -> Figure:
    """Confusion matrix (rows: true class, columns: predicted) beside the per-class accuracy."""
    import numpy as np

    matrix = np.asarray(matrix)
    totals = matrix.sum(1)
    per_class = np.divide(np.diag(matrix), totals, out=np.zeros(len(matrix)), where=totals > 0)
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(14, 6.5), gridspec_kw={"width_ratios": [1.35, 1]})
    ax.imshow(matrix, cmap="Blues")
    n = len(classes)
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    high = matrix.max() / 2 if matrix.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(matrix[i, j]),
                ha="center",
                va="center",
                fontsize="x-small",
                color="white" if matrix[i, j] > high else "black",
            )
    ax.set_title("Confusion matrix")
    bars.barh(range(n), 100 * per_class, color="tab:blue")
    bars.set_yticks(range(n), classes)
    bars.invert_yaxis()
    bars.set_xlim(0, 110)
    bars.set_xlabel("%")
    for i, acc in enumerate(per_class):
        bars.text(100 * acc + 1, i, f"{100 * acc:.1f}%", va="center", fontsize="small")
    overall = np.trace(matrix) / max(1, matrix.sum())
    bars.axvline(100 * overall, color="tab:red", linestyle="--", label=f"overall {100 * overall:.2f}%")
    bars.legend(loc="lower right", fontsize="small")
    bars.set_title("Per-class accuracy")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
