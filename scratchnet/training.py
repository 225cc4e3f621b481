"""The training and evaluation loops, resumable at any batch boundary.

:class:`TrainState` is the loop's position (epochs and batches done, the partial epoch's sums,
the shuffle generator's state at the start of the epoch, the finished epochs' metrics). Saved
with the weights, the optimizer state and the dropout generator's state, it lets :func:`fit`
continue to exactly the numbers an uninterrupted run gives: the epoch's order is drawn again
from the saved shuffle state and the batches already done are skipped.
"""
import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import backend
from .data import DataLoader
from .nn.module import backward_to_params
from .optim.lr_scheduler import ReduceLROnPlateau


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or infinite; training stopped before that batch changed anything."""


class TrainingInterrupted(Exception):
    """``should_stop()`` asked :func:`fit` to stop; the TrainState is at a batch boundary."""


@dataclass
class TrainState:
    """Where training stands; JSON-serialisable via :meth:`to_dict` / :meth:`from_dict`."""

    shuffle_state: dict          # shuffle generator state at the start of the current epoch
    epoch: int = 0               # epochs completed
    batch: int = 0               # batches completed in the current epoch
    loss_sum: float = 0.0        # sum of (batch loss x batch samples) over those batches
    correct: int = 0             # correct predictions among them
    seen: int = 0                # targets scored among them
    seconds: float = 0.0         # training time spent in the current epoch so far
    samples: int = 0             # samples among them (seen counts targets: 2 per two-digit one)
    metric_sums: dict = field(default_factory=dict)  # the task's extra metrics, summed
    history: list = field(default_factory=list)  # one metrics dict per completed epoch

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        if "samples" not in d:  # saved before two-digit models: one target per sample
            d = {**d, "samples": d.get("seen", 0)}
        return cls(**d)


def evaluate(model, task, x, y, batch_size=1000):
    """Loss and accuracy of ``model`` on (x, y) in eval mode (dropout off).

    Returns ``{"loss", "accuracy", "predictions"}``: mean loss per sample, fraction of targets
    predicted right, and the predictions (shaped like ``y``), plus the task's extra metrics
    (``task.metric_sums``) averaged per sample. NaN loss/accuracy when empty.
    """
    model.eval()
    loss_sum, predictions, sums = 0.0, [], {}
    for xb, yb in DataLoader(x, y, batch_size):
        out = model(xb)
        loss_sum += task.loss(out, yb) * len(yb)
        _add(sums, task.metric_sums(out, yb))
        predictions.append(task.predict(out))
    if not predictions:
        return {"loss": math.nan, "accuracy": math.nan, "predictions": np.zeros_like(y)}
    predictions = np.concatenate(predictions)
    return {"loss": loss_sum / len(y), "accuracy": float(np.mean(predictions == y)),
            **{k: v / len(y) for k, v in sums.items()}, "predictions": predictions}


def _add(sums, batch_sums):
    for k, v in batch_sums.items():
        sums[k] = sums.get(k, 0) + v


def confusion_matrix(true, predicted, num_classes=10):
    """(C, C) int64 counts: row = true class, column = predicted class."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.ravel(true), np.ravel(predicted)), 1)
    return m


def per_class_accuracy(matrix):
    """Fraction right per true class (NaN for a class with no samples)."""
    totals = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(matrix) / totals


def _loss_gradient(task, yb):
    """The step's loss as compile_ahead walks it: output -> the gradient backward starts from."""
    def loss(out):
        task.loss(out, yb)
        return task.backward()
    return loss


def _train_epoch(model, task, optimizer, loader, state, should_stop, on_batch):
    """Run the rest of the current epoch from ``state.batch``, updating ``state`` per batch."""
    model.train()
    batches = iter(loader)
    for _ in range(state.batch):  # replays the epoch's order; these batches are done
        next(batches)
    first = True
    for xb, yb in batches:
        start = time.perf_counter()
        if first:
            # numba, first run: a helper process compiles the step's kernels with this one
            # (once per model and batch shape; nothing on the numpy backend)
            backend.ops().compile_ahead(model, xb, optimizer, _loss_gradient(task, yb))
            first = False
        out = model(xb)
        loss = task.loss(out, yb)
        if not math.isfinite(loss):
            raise NonFiniteLoss(
                f"the loss became {loss} at epoch {state.epoch + 1}, batch {state.batch + 1}; "
                f"try a smaller learning rate")
        optimizer.zero_grad()
        # parameter gradients only: nothing needs the gradient of the images themselves
        backward_to_params(model, task.backward())
        optimizer.step()
        state.seconds += time.perf_counter() - start
        state.batch += 1
        correct = int(np.sum(task.predict(out) == yb))
        state.loss_sum += loss * len(yb)
        state.correct += correct
        state.seen += int(np.size(yb))
        state.samples += len(yb)
        _add(state.metric_sums, task.metric_sums(out, yb))
        if on_batch is not None:
            on_batch({"epoch": state.epoch + 1, "batch": state.batch, "batches": len(loader),
                      "loss": loss, "accuracy": correct / np.size(yb), "samples": len(yb),
                      "lr": float(optimizer.param_groups[0]["lr"]), "seconds": state.seconds})
        if should_stop():
            raise TrainingInterrupted()


def step_scheduler(scheduler, record):
    """One epoch's step: ReduceLROnPlateau watches the validation loss (else the training
    loss); the others step by the epoch count."""
    if scheduler is None:
        return
    if isinstance(scheduler, ReduceLROnPlateau):
        loss = record["val_loss"] if record["val_loss"] is not None else record["train_loss"]
        scheduler.step(loss)
    else:
        scheduler.step()


def fit(model, task, optimizer, train, val, epochs, batch_size, shuffle_rng, state,
        should_stop=None, on_batch=None, on_epoch=None, scheduler=None):
    """Train ``model`` until ``state.epoch == epochs``, from wherever ``state`` stands.

    train, val: (x, y) pairs; val may be None. shuffle_rng: the numpy Generator that orders
    each epoch (set to ``state.shuffle_state`` first). After every batch ``on_batch(info)``
    gets the step's numbers (see :mod:`scratchnet.callbacks`), then ``should_stop()`` is asked;
    a true answer raises TrainingInterrupted with ``state`` consistent with the weights. After
    every epoch the scheduler (if any) steps and ``on_epoch(record)`` gets that epoch's
    metrics (also appended to ``state.history``). Raises NonFiniteLoss, before the step, when
    the loss is NaN or inf.
    """
    should_stop = should_stop or (lambda: False)
    x, y = train
    while state.epoch < epochs:
        shuffle_rng.bit_generator.state = state.shuffle_state
        loader = DataLoader(x, y, batch_size, shuffle=True, rng=shuffle_rng)
        _train_epoch(model, task, optimizer, loader, state, should_stop, on_batch)
        record = {"epoch": state.epoch + 1,
                  "train_loss": state.loss_sum / max(state.samples, 1),
                  "train_accuracy": state.correct / max(state.seen, 1),
                  "val_loss": None, "val_accuracy": None,
                  "lr": float(optimizer.param_groups[0]["lr"]),
                  "seconds": state.seconds,
                  "samples_per_s": state.samples / max(state.seconds, 1e-9)}
        extra = sorted(state.metric_sums)
        record.update({f"train_{k}": state.metric_sums[k] / max(state.samples, 1)
                       for k in extra})
        record.update({f"val_{k}": None for k in extra})
        if val is not None and len(val[1]):
            result = evaluate(model, task, *val, batch_size=max(batch_size, 1000))
            for k in ("loss", "accuracy", *extra):
                record[f"val_{k}"] = result[k]
        state.history.append(record)
        state.shuffle_state = shuffle_rng.bit_generator.state
        state.epoch += 1
        state.batch, state.loss_sum, state.correct, state.seen, state.seconds = 0, 0.0, 0, 0, 0.0
        state.samples, state.metric_sums = 0, {}
        step_scheduler(scheduler, record)
        if on_epoch is not None:
            on_epoch(record)
        if should_stop():
            raise TrainingInterrupted()
    return state.history
