"""Observers of training: objects the run calls at its start, batch ends, epoch ends and end.

A callback is any object with any of these methods (missing ones are skipped)::

    on_train_start(run)          before the first batch (also when resuming)
    on_batch_end(run, info)      after each optimizer step: info has epoch (1-based, in
                                 progress), batch (done in this epoch), batches (per epoch),
                                 loss, accuracy (this batch), samples (this batch), lr (first
                                 parameter group), seconds (training time so far this epoch)
    on_epoch_end(run, record)    the epoch's metrics, as appended to run.history
    on_train_end(run, status)    "finished", "interrupted" or "failed"

``run`` has ``model``, ``optimizer``, ``scheduler`` (or None), ``config``, ``out`` (the run
folder, or None) and ``history``. ``on_batch_end`` runs after ``optimizer.step()``, so every
``p.grad`` still holds that batch's gradient. The run saves its checkpoint before
``on_epoch_end``, so a callback sees the epoch already safe on disk.
"""
import math

from tqdm.auto import tqdm

HOOKS = ("on_train_start", "on_batch_end", "on_epoch_end", "on_train_end")


class Callback:
    """A base class with every hook doing nothing; subclassing it is optional."""

    def on_train_start(self, run):
        pass

    def on_batch_end(self, run, info):
        pass

    def on_epoch_end(self, run, record):
        pass

    def on_train_end(self, run, status):
        pass


class CallbackList:
    """Calls each hook on every callback that has it, in order."""

    def __init__(self, callbacks=()):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not any(callable(getattr(cb, hook, None)) for hook in HOOKS):
                raise TypeError(f"callbacks: {cb!r} has none of the methods {', '.join(HOOKS)}")

    def _call(self, hook, *args):
        for cb in self.callbacks:
            method = getattr(cb, hook, None)
            if method is not None:
                method(*args)

    def on_train_start(self, run):
        self._call("on_train_start", run)

    def on_batch_end(self, run, info):
        self._call("on_batch_end", run, info)

    def on_epoch_end(self, run, record):
        self._call("on_epoch_end", run, record)

    def on_train_end(self, run, status):
        self._call("on_train_end", run, status)


class ProgressBar(Callback):
    """One tqdm bar per epoch (a terminal bar, or a widget in a notebook: ``tqdm.auto``).

    Shows the epoch's mean loss and accuracy so far (tqdm adds batches per second). ``leave``: keep
    each finished epoch's bar (with its validation results) on screen.
    """

    def __init__(self, leave=True):
        self.leave = leave
        self.bar = None

    def on_batch_end(self, run, info):
        if self.bar is None:
            self.bar = tqdm(total=info["batches"], initial=info["batch"] - 1, leave=self.leave,
                            desc=f"epoch {info['epoch']}/{run.config['epochs']}", unit="batch")
            self.sums = [0.0, 0.0, 0]
        n = info["samples"]
        self.sums[0] += info["loss"] * n
        self.sums[1] += info["accuracy"] * n
        self.sums[2] += n
        loss, acc, seen = self.sums
        self.bar.set_postfix({"loss": f"{loss / seen:.4f}", "acc": f"{acc / seen:.4f}"},
                             refresh=False)
        self.bar.update()

    def on_epoch_end(self, run, record):
        if self.bar is None:
            return
        postfix = {"loss": f"{record['train_loss']:.4f}",
                   "acc": f"{record['train_accuracy']:.4f}"}
        for key in ("val_loss", "val_accuracy"):
            value = record.get(key)
            if value is not None and math.isfinite(value):
                postfix[key] = f"{value:.4f}"
        self.bar.set_postfix(postfix)
        self.close()

    def on_train_end(self, run, status):
        self.close()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
