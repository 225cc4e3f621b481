"""PNG figures for a training run: learning curves, sample predictions, confusion matrix.

Drawn on matplotlib's Agg canvas directly (no pyplot), so nothing needs a display and no
global matplotlib state changes. Each function writes its PNG and returns the Figure.
"""
import json

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator, PercentFormatter


def _save(fig, path):
    """Write ``fig`` as a PNG; the figure is returned for callers that inspect it."""
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)
    return fig


# panels of a two-digit run's curves: (title, [(metric, legend label), ...])
_TWO_DIGIT_PANELS = (
    ("loss", [("loss_first", "first digit"), ("loss_second", "second digit")]),
    ("accuracy", [("accuracy_first", "first digit"), ("accuracy_second", "second digit")]),
    ("both digits right", [("accuracy_both", "")]),
)
# (history key prefix, legend name, line style, marker) of each measured split
_SPLITS = (("train", "train", "-", "o"), ("val", "validation", "--", "s"),
           ("test", "test", ":", "^"))


def _values(history, key):
    """``key`` of each record, or None when no record has it."""
    values = [h.get(key) for h in history]
    return values if any(v is not None for v in values) else None


def _format(value, accuracy):
    return f"{100 * value:.2f}%" if accuracy else f"{value:.4f}"


def _summary(history, test):
    """"3 epochs, test accuracy 98.76%": what a reader wants before reading the curves."""
    text = f"{len(history)} epoch{'s' if len(history) != 1 else ''}"
    accuracy = (test or {}).get("test_accuracy")
    if accuracy is None and history:
        accuracy = history[-1].get("test_accuracy")
    return text + (f", test accuracy {100 * accuracy:.2f}%" if accuracy is not None else "")


def read_batch_events(path):
    """The ``batch`` records of an ``events.jsonl`` (a run's event log), oldest first.

    Each is a dict with at least epoch, batch, batches, loss, accuracy. A missing file gives
    []; a partial last line (the run still writing it) is skipped.
    """
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and event.get("type") == "batch":
                    records.append(event)
    except FileNotFoundError:
        pass
    return records


def _batch_curve(ax, batches, key, accuracy):
    """Per-batch ``key`` along fractional epochs (epoch k ends at x = k)."""
    points = [(b["epoch"] - 1 + b["batch"] / b["batches"], b.get(key)) for b in batches
              if b.get(key) is not None and b.get("batches")]
    if len(points) > 1:  # one point is no curve
        x, y = zip(*points)
        ax.plot(x, y, "-", lw=0.8, alpha=0.45, color="C0", label="train, per batch")


def _epoch_axis(ax, epochs, per_batch):
    """Whole epochs only on the x axis; a lone epoch gets room on both sides, not a span of
    fractions around one dot."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    first, last = min(epochs), max(epochs)
    if per_batch:
        ax.set_xlim(first - 1, last + 0.2 * (last - first + 1))
    else:
        ax.set_xlim(first - 0.5, last + 0.5)
    ax.set_xlabel("epoch")


def training_curves(history, path, title=None, test=None, batches=None):
    """Loss and accuracy per epoch for each split the run measured, with a title.

    history: the run's epoch records (``epoch``, ``train_<metric>``, and ``val_<metric>`` /
    ``test_<metric>`` when measured). test: final test metrics (``test_loss``,
    ``test_accuracy``, ...), drawn at the last epoch when the history has no test figures of
    its own, so a run without a validation split still shows held-out accuracy. batches:
    per-batch records (see :func:`read_batch_events`), drawn as a thin line along the epochs;
    without them a run's few epochs are markers on whole-epoch ticks, each labelled when
    there are at most two. title: what the run was (``"lenet on MNIST"``); the number of
    epochs and the test accuracy are appended. A two-digit run's history
    (``train_accuracy_both`` in it) gets each digit's loss and accuracy and a third panel.
    """
    epochs = [h["epoch"] for h in history]
    two_digit = bool(history) and "train_accuracy_both" in history[0]
    panels = _TWO_DIGIT_PANELS if two_digit else (("loss", [("loss", "")]),
                                                   ("accuracy", [("accuracy", "")]))
    per_batch = bool(batches) and not two_digit
    fig = Figure(figsize=(4.5 * len(panels), 3.8))
    fig.subplots_adjust(left=0.08 if len(panels) == 2 else 0.06, right=0.98, bottom=0.14,
                        top=0.84, wspace=0.25)
    heading = _summary(history, test)
    fig.suptitle(f"{title}: {heading}" if title else heading, fontsize=11)
    for ax, (name, keys) in zip(fig.subplots(1, len(panels)), panels):
        accuracy = "accuracy" in name or "right" in name
        if per_batch:
            _batch_curve(ax, batches, name, accuracy)
        for key, label in keys:
            prefix = f"{label}, " if label else ""
            colour = None
            for split, legend, style, marker in _SPLITS:
                values = _values(history, f"{split}_{key}")
                if values is None:
                    continue
                line = ax.plot(epochs, values, style, marker=marker, color=colour,
                               label=prefix + legend)[0]
                colour = colour or (line.get_color() if label else None)
                if len(epochs) <= 2 and values[-1] is not None:
                    ax.annotate(_format(values[-1], accuracy), (epochs[-1], values[-1]),
                                textcoords="offset points", xytext=(6, 0), va="center",
                                fontsize=7, color=line.get_color())
            final = (test or {}).get(f"test_{key}")
            if final is not None and _values(history, f"test_{key}") is None and epochs:
                ax.plot([epochs[-1]], [final], linestyle="none", marker="*", markersize=11,
                        color=colour or "C2", label=prefix + "test (final)")
                ax.annotate(_format(final, accuracy), (epochs[-1], final),
                            textcoords="offset points", xytext=(8, -8), fontsize=7,
                            color=colour or "C2")
        if epochs:
            _epoch_axis(ax, epochs, per_batch)
        if accuracy:
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def _shown(wrong, n):
    """Indices of the tiles to draw: misclassified first (at least half the grid when there
    are that many), then correctly classified ones, each group in test-set order."""
    bad, good = np.flatnonzero(wrong), np.flatnonzero(~wrong)
    n_bad = min(len(bad), max(n // 2, n - len(good)))
    return np.concatenate([bad[:n_bad], good[:n - n_bad]]).astype(np.int64)


def prediction_grid(images, predicted, true, path, classes=None, n=36):
    """Test images in a grid captioned "pred (true)": misclassified ones first, in red.

    images: uint8 (N, H, W), e.g. (N, 28, 28); predicted, true: (N,) int, or (N, 2) for
    two-digit canvases (N, 42, 28), captioned like "37 (38)" (first digit, second) and marked when
    either digit is wrong. Up to ``n`` tiles: the first misclassified images (at least half
    the grid when there are that many), then the first correct ones; the title counts the
    errors over all N. Drawn as one mosaic in one axes: a subplot per image would cost
    seconds of layout for a small picture.
    """
    predicted, true = np.asarray(predicted), np.asarray(true)
    wrong = (predicted != true).reshape(len(true), -1).any(axis=1)
    order = _shown(wrong, min(n, len(images)))
    n = len(order)
    cols = max(1, int(np.ceil(np.sqrt(n))))
    rows = max(1, int(np.ceil(n / cols)))
    h, w = images.shape[1:] if len(images) else (28, 28)
    # mosaic pixels between tiles and above each for its caption (two lines for class names)
    pad, caption, title = (28, 22, 16) if classes else (6 if true.ndim == 1 else 12, 12, 16)
    cell_h, cell_w = h + caption, w + pad
    width = max(cols * cell_w, 300)  # room for the title line; tiles centred
    margin = (width - cols * cell_w) // 2
    mosaic = np.full((rows * cell_h, width), 255, dtype=np.uint8)
    height = rows * cell_h + title
    fig = Figure(figsize=(width / 36, height / 36))  # 36 mosaic pixels per inch
    ax = fig.add_axes((0, 0, 1, 1 - title / height))
    name = (lambda c: classes[c]) if classes else \
        (lambda c: "".join(str(v) for v in np.ravel(c)))
    sep = "\n" if classes else " "
    for slot, i in enumerate(order):
        r, c = divmod(slot, cols)
        top, left = r * cell_h + caption, margin + c * cell_w + pad // 2
        mosaic[top:top + h, left:left + w] = images[i]
        colour = "red" if wrong[i] else "black"
        ax.text(left + w / 2, top - 1.5, f"{name(predicted[i])}{sep}({name(true[i])})",
                ha="center", va="bottom", fontsize=7, color=colour)
        if wrong[i]:
            ax.add_patch(Rectangle((left - 1, top - 1), w + 1, h + 1, fill=False,
                                   edgecolor="red", linewidth=1.2))
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest", aspect="auto")
    ax.axis("off")
    errors = int(wrong.sum())
    heading = (f"predicted (true): {errors} of {len(true)} test images misclassified, "
               f"shown first in red" if errors else
               f"predicted (true): all {len(true)} test images right")
    fig.suptitle(heading, fontsize=8, y=1 - 2 / height, va="top")
    return _save(fig, path)


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
    return _save(fig, path)
