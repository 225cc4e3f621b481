"""The event log of a run folder, ``events.jsonl``: what training observed, one JSON per line.

Every object has ``type`` and ``time`` (unix seconds)::

    {"type": "start", "model", "epochs" (target), "batches_per_epoch", "batch_size",
     "resumed", "config"}
    {"type": "batch", "epoch", "batch", "batches", "loss", "accuracy", "lr", "samples_per_s",
     "eta_s", "norms": {parameter: {"weight": L2 norm, "grad": L2 norm}}}
    {"type": "epoch", "epoch", ...the epoch's record in run.history}
    {"type": "end", "status": "finished" | "interrupted" | "failed"}

A batch event comes every ``every`` batches and at each epoch's end; its loss and accuracy are
the means over the batches since the previous one (weighted by samples). NaN and infinities
are written as null. Lines are appended and flushed one at a time, so a reader may see the
file grow while training runs; it must tolerate a partial last line (a killed writer's).
"""
import json
import os
import time

import numpy as np

from .callbacks import Callback
from .jsonsafe import finite

FILENAME = "events.jsonl"


def _norm(array):
    return float(np.sqrt(np.sum(np.square(array, dtype=np.float64))))


def parameter_norms(model):
    """{parameter name: {"weight": L2 norm, "grad": L2 norm or None}} in float64."""
    return {name: {"weight": _norm(p.data),
                   "grad": None if p.grad is None else _norm(p.grad)}
            for name, p in model.named_parameters()}


def read(path):
    """The events in ``path`` as a list of dicts, without the lines a killed writer left
    unfinished (the last one, or one that a resumed run's writer ended)."""
    events = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


class EventLog(Callback):
    """Appends a run's events to ``path`` (default: ``run.out / events.jsonl``)."""

    def __init__(self, path=None, every=10):
        self.path, self.every = path, every
        self.file = None

    def _write(self, event):
        event = {"type": event.pop("type"), "time": time.time(), **event}
        self.file.write(json.dumps(finite(event), allow_nan=False) + "\n")
        self.file.flush()

    def on_train_start(self, run):
        path = self.path or os.path.join(run.out, FILENAME)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.file = open(path, "a", encoding="utf-8")
        if self.file.tell() and not _ends_with_newline(path):
            self.file.write("\n")  # the previous writer was killed mid-line
        self._reset(None)
        self.warming_up = True
        self._write({"type": "start", "model": run.config["model"],
                     "epochs": run.config["epochs"],
                     "batches_per_epoch": run.batches_per_epoch,
                     "batch_size": run.config["batch_size"], "resumed": run.resumed,
                     "config": run.config})

    def _reset(self, seconds):
        """Start new sums; ``seconds``: the epoch's training time at this point, if known."""
        self.loss = self.correct = 0.0
        self.samples = self.timed_samples = self.timed_batches = 0
        self.since = seconds

    def on_batch_end(self, run, info):
        if self.file is None:
            return
        n = info["samples"]
        if self.warming_up:  # the process's first batch may compile kernels: not timed
            self.warming_up = False
            self.since = None
        elif self.since is None and info["batch"] == 1:
            self.since = 0.0  # an epoch's clock starts at zero
        if self.since is None:  # time the batches after this one
            self.since = info["seconds"]
        else:
            self.timed_samples += n
            self.timed_batches += 1
        self.loss += info["loss"] * n
        self.correct += info["accuracy"] * n
        self.samples += n
        if info["batch"] % self.every and info["batch"] != info["batches"]:
            return
        seconds = info["seconds"] - self.since
        timed = self.timed_batches and seconds > 0
        left = (info["batches"] - info["batch"]
                + info["batches"] * (run.config["epochs"] - info["epoch"]))
        self._write({"type": "batch", "epoch": info["epoch"], "batch": info["batch"],
                     "batches": info["batches"], "loss": self.loss / self.samples,
                     "accuracy": self.correct / self.samples, "lr": info["lr"],
                     "samples_per_s": self.timed_samples / seconds if timed else None,
                     "eta_s": left * seconds / self.timed_batches if timed else None,
                     "norms": parameter_norms(run.model)})
        self._reset(info["seconds"] if info["batch"] != info["batches"] else None)

    def on_epoch_end(self, run, record):
        if self.file is not None:
            self._write({"type": "epoch", **record})

    def on_train_end(self, run, status):
        if self.file is not None:
            self._write({"type": "end", "status": status})
            self.file.close()
            self.file = None


def _ends_with_newline(path):
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
