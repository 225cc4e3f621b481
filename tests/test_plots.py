"""Run plots: titled curves with every measured split, whole-epoch axes, errors shown first."""
import numpy as np
import pytest
from PIL import Image

from scratchnet import plots


def record(epoch, val=True, test=False):
    r = {"epoch": epoch, "train_loss": 1 / (epoch + 1), "train_accuracy": 1 - 0.1 / epoch,
         "val_loss": 1.1 / (epoch + 1) if val else None,
         "val_accuracy": 1 - 0.12 / epoch if val else None, "seconds": 1.0}
    if test:
        r.update(test_loss=1.2 / (epoch + 1), test_accuracy=1 - 0.13 / epoch)
    return r


def labels_of(ax):
    return ax.get_legend_handles_labels()[1]


def test_curves_have_a_title_and_the_final_test_figures_without_a_validation_split(tmp_path):
    path = tmp_path / "curves.png"
    fig = plots.training_curves([record(e, val=False) for e in (1, 2, 3)], path,
                                title="lenet on MNIST",
                                test={"test_loss": 0.2, "test_accuracy": 0.9512})
    assert fig.get_suptitle() == "lenet on MNIST: 3 epochs, test accuracy 95.12%"
    loss, accuracy = fig.axes
    assert labels_of(loss) == labels_of(accuracy) == ["train", "test (final)"]
    star = accuracy.get_lines()[-1]
    assert list(star.get_xdata()) == [3] and list(star.get_ydata()) == [0.9512]
    assert Image.open(path).format == "PNG"


def test_per_epoch_test_and_validation_figures_are_drawn_as_series(tmp_path):
    fig = plots.training_curves([record(e, test=True) for e in (1, 2)], tmp_path / "c.png",
                                test={"test_accuracy": 0.9})
    assert labels_of(fig.axes[1]) == ["train", "validation", "test"]
    assert fig.get_suptitle() == "2 epochs, test accuracy 90.00%"


def test_one_epoch_sits_on_a_whole_epoch_axis_with_its_values_written(tmp_path):
    fig = plots.training_curves([record(1)], tmp_path / "c.png")
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks == [1] and (lo, hi) == (0.5, 1.5)
    assert sorted(t.get_text() for t in fig.axes[1].texts) == ["88.00%", "90.00%"]


def test_per_batch_records_give_a_curve_through_the_epoch(tmp_path):
    events = tmp_path / "events.jsonl"
    lines = ['{"type": "start", "time": 0}']
    lines += [f'{{"type": "batch", "time": 1, "epoch": 1, "batch": {b}, "batches": 50, '
              f'"loss": {2 / b}, "accuracy": {1 - 1 / b}}}' for b in range(10, 51, 10)]
    events.write_text("\n".join(lines) + '\n{"type": "batch", "epo')  # still being written
    batches = plots.read_batch_events(events)
    assert [b["batch"] for b in batches] == [10, 20, 30, 40, 50]
    fig = plots.training_curves([record(1)], tmp_path / "c.png", batches=batches)
    curve = fig.axes[0].get_lines()[0]
    assert labels_of(fig.axes[0])[0] == "train, per batch"
    np.testing.assert_allclose(curve.get_xdata(), [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(curve.get_ydata(), [2 / b for b in range(10, 51, 10)])
    assert plots.read_batch_events(tmp_path / "absent.jsonl") == []


@pytest.mark.parametrize("wrong, n, expected", [
    ([0, 1, 0, 1, 0, 0], 4, [1, 3, 0, 2]),           # both errors, then the first right ones
    ([1, 1, 1, 1, 0, 0], 4, [0, 1, 4, 5]),           # half the grid for errors at least...
    ([1, 1, 1, 1, 1, 0], 4, [0, 1, 2, 5]),           # ...more when too few are right
    ([0, 0, 0], 5, [0, 1, 2]),
])
def test_misclassified_images_come_first(wrong, n, expected):
    assert plots._shown(np.array(wrong, dtype=bool), n).tolist() == expected


def test_prediction_grid_marks_and_counts_the_errors(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 28, 28)).astype(np.uint8)
    true = np.arange(40) % 10
    predicted = true.copy()
    predicted[[5, 30]] = (true[[5, 30]] + 1) % 10
    fig = plots.prediction_grid(images, predicted, true, tmp_path / "p.png", n=9)
    assert fig.get_suptitle().startswith("predicted (true): 2 of 40 test images misclassified")
    captions = [(t.get_text(), t.get_color()) for t in fig.axes[0].texts]
    assert captions[:3] == [("6 (5)", "red"), ("1 (0)", "red"), ("0 (0)", "black")]
    assert len(captions) == 9 and len(fig.axes[0].patches) == 2
