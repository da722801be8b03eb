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


def save(fig: Figure, path) -> None:
    fig.savefig(path, dpi=100)
    plt.close(fig)
