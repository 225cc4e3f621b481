"""Callbacks: what a user's observer sees, in which order, and how a run ends for it."""
import signal

import numpy as np
import pytest

import scratchnet as sn
from scratchnet.callbacks import CallbackList
from scratchnet.run import Interrupted
from scratchnet.training import NonFiniteLoss

QUICK = dict(backend="numpy", limit_train=400, limit_test=50, batch_size=32,
             no_progress=True)
INFO_KEYS = {"epoch", "batch", "batches", "loss", "accuracy", "samples", "lr", "seconds"}


class Recorder:
    def __init__(self):
        self.calls, self.infos, self.records, self.grads = [], [], [], []

    def on_train_start(self, run):
        self.calls.append("start")
        self.config = dict(run.config)

    def on_batch_end(self, run, info):
        self.calls.append("batch")
        self.infos.append(info)
        self.grads.append({n: p.grad.copy() for n, p in run.model.named_parameters()})

    def on_epoch_end(self, run, record):
        self.calls.append("epoch")
        self.records.append(record)
        assert run.history[-1] is record

    def on_train_end(self, run, status):
        self.calls.append(status)


def test_a_users_callback_sees_every_batch_and_epoch(tmp_path):
    rec = Recorder()
    run = sn.train("mlp", epochs=2, out=str(tmp_path / "r"), callbacks=[rec], **QUICK)
    batches = 12  # 360 training images (10 % held out) in batches of 32
    assert rec.calls == ["start", *["batch"] * batches, "epoch", *["batch"] * batches, "epoch",
                         "finished"]
    assert all(set(info) == INFO_KEYS for info in rec.infos)
    assert [(i["epoch"], i["batch"]) for i in rec.infos] == \
        [(e, b) for e in (1, 2) for b in range(1, batches + 1)]
    assert all(i["batches"] == batches and i["lr"] == 0.1 for i in rec.infos)
    assert sum(i["samples"] for i in rec.infos[:batches]) == 360
    seconds = [i["seconds"] for i in rec.infos[:batches]]
    assert seconds == sorted(seconds) and seconds[0] > 0
    mean_loss = sum(i["loss"] * i["samples"] for i in rec.infos[:batches]) / 360
    assert mean_loss == pytest.approx(rec.records[0]["train_loss"], rel=1e-12)
    assert rec.records == run.history and rec.config["epochs"] == 2
    assert all(np.any(g != 0) for g in rec.grads[-1].values())  # the step's gradients


def test_a_failed_and_an_interrupted_run_end_with_their_status(tmp_path, monkeypatch):
    rec = Recorder()
    with pytest.raises(NonFiniteLoss):
        sn.train("mlp", lr=1e30, out=str(tmp_path / "a"), callbacks=[rec], **QUICK)
    assert rec.calls[0] == "start" and rec.calls[-1] == "failed"

    original = sn.optim.SGD.step

    def step(self, closure=None):
        signal.raise_signal(signal.SIGINT)
        return original(self, closure)
    monkeypatch.setattr(sn.optim.SGD, "step", step)
    rec = Recorder()
    with pytest.raises(Interrupted):
        sn.train("mlp", out=str(tmp_path / "b"), callbacks=[rec], **QUICK)
    assert rec.calls == ["start", "batch", "interrupted"]


def test_an_object_without_hooks_is_refused():
    with pytest.raises(TypeError, match="none of the methods"):
        CallbackList([object()])
