"""PNG figures for a training run: learning curves, sample predictions, confusion matrix.

Drawn on matplotlib's Agg canvas directly (no pyplot), so nothing needs a display and no
global matplotlib state changes.
"""
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _save(fig, path):
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)


# panels of a two-digit run's curves: (title, [(metric, legend label), ...])
_TWO_DIGIT_PANELS = (
    ("loss", [("loss_first", "first digit"), ("loss_second", "second digit")]),
    ("accuracy", [("accuracy_first", "first digit"), ("accuracy_second", "second digit")]),
    ("both digits right", [("accuracy_both", "")]),
)


def training_curves(history, path):
    """Loss and accuracy per epoch (train, and validation when present) from metrics history.

    A two-digit run's history (``train_accuracy_both`` in it) gets each digit's loss and
    accuracy and a third panel for the both-digits-right accuracy.
    """
    epochs = [h["epoch"] for h in history]
    two_digit = bool(history) and "train_accuracy_both" in history[0]
    panels = _TWO_DIGIT_PANELS if two_digit else (("loss", [("loss", "")]),
                                                   ("accuracy", [("accuracy", "")]))
    fig = Figure(figsize=(4.5 * len(panels), 3.5))
    fig.subplots_adjust(left=0.08 if len(panels) == 2 else 0.06, right=0.98, bottom=0.15,
                        top=0.92, wspace=0.25)
    for ax, (title, keys) in zip(fig.subplots(1, len(panels)), panels):
        for key, label in keys:
            prefix = f"{label}, " if label else ""
            line = ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-",
                           label=prefix + "train")[0]
            if any(h.get(f"val_{key}") is not None for h in history):
                ax.plot(epochs, [h.get(f"val_{key}") for h in history], "s--",
                        color=line.get_color() if label else None, label=prefix + "validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)


def prediction_grid(images, predicted, true, path, classes=None, n=25):
    """The first ``n`` images in a grid captioned "pred (true)"; misclassified ones in red.

    images: uint8 (N, H, W), e.g. (N, 28, 28); predicted, true: (N,) int, or (N, 2) for
    two-digit canvases (N, 42, 28), captioned like "37 (38)" (first digit, second) and marked when
    either digit is wrong. Drawn as one mosaic in one axes: a subplot per image would cost
    seconds of layout for a small picture.
    """
    n = min(n, len(images))
    cols = max(1, int(np.ceil(np.sqrt(n))))
    rows = max(1, int(np.ceil(n / cols)))
    h, w = images.shape[1:] if n else (28, 28)
    # mosaic pixels between tiles and above each for its caption (two lines for class names)
    pad, caption, title = (28, 22, 14) if classes else (4 if np.ndim(true) == 1 else 12, 12, 14)
    cell_h, cell_w = h + caption, w + pad
    mosaic = np.full((rows * cell_h, cols * cell_w), 255, dtype=np.uint8)
    height = rows * cell_h + title
    fig = Figure(figsize=(cols * cell_w / 36, height / 36))  # 36 mosaic pixels per inch
    ax = fig.add_axes((0, 0, 1, 1 - title / height))
    name = (lambda c: classes[c]) if classes else \
        (lambda c: "".join(str(v) for v in np.ravel(c)))
    sep = "\n" if classes else " "
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = r * cell_h + caption, c * cell_w + pad // 2
        mosaic[top:top + h, left:left + w] = images[i]
        wrong = bool(np.any(predicted[i] != true[i]))
        ax.text(left + w / 2, top - 1.5, f"{name(predicted[i])}{sep}({name(true[i])})"
                + (" ✗" if wrong else ""), ha="center", va="bottom", fontsize=7,
                color="red" if wrong else "black")
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest", aspect="auto")
    ax.axis("off")
    fig.suptitle("predicted (true); red: misclassified", fontsize=9, y=1 - 2 / height, va="top")
    _save(fig, path)


def confusion_matrix_figure(matrix, path, classes=None, titles=None):
    """Heat map of ``matrix`` (C, C): rows true class, columns predicted, counts written in.

    ``matrix`` may also be a list of matrices (a two-digit model's, one per digit), drawn
    side by side with their ``titles``.
    """
    matrices = [np.asarray(m) for m in matrix] if isinstance(matrix, (list, tuple)) \
        else [np.asarray(matrix)]
    titles = titles or [None] * len(matrices)
    fig = Figure(figsize=(6 * len(matrices), 5.5))
    fig.subplots_adjust(left=0.2 / len(matrices) if classes else 0.1 / len(matrices),
                        right=0.98, bottom=0.2 if classes else 0.1,
                        top=0.93 if any(titles) else 0.97, wspace=0.15)
    axes = fig.subplots(1, len(matrices), squeeze=False)[0]
    for ax, matrix, title in zip(axes, matrices, titles):
        c = len(matrix)
        im = ax.imshow(matrix, cmap="Blues")
        fig.colorbar(im, ax=ax, shrink=0.8)
        labels = classes if classes else [str(i) for i in range(c)]
        ax.set_xticks(range(c), labels, rotation=45 if classes else 0, fontsize=8)
        ax.set_yticks(range(c), labels, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if title:
            ax.set_title(title, fontsize=10)
        threshold = matrix.max() / 2 if matrix.size else 0
        for i in range(c):
            for j in range(c):
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] > threshold else "black")
    _save(fig, path)
