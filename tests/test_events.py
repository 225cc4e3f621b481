"""events.jsonl: what the run folder's event log holds, line by line."""
import json
import math

import numpy as np
import pytest

import scratchnet as sn
from scratchnet import checkpoint, events
from tests.test_callbacks import QUICK, Recorder


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    out = tmp_path_factory.mktemp("ev") / "r"
    rec = Recorder()
    run = sn.train("mlp", epochs=2, out=str(out), callbacks=[rec], **QUICK)
    return run, rec, events.read(out / "events.jsonl")


def test_the_sequence_of_events(logged):
    run, _, log = logged
    assert [e["type"] for e in log] == ["start", "batch", "batch", "epoch", "batch", "batch",
                                        "epoch", "end"]
    assert all(isinstance(e["time"], float) for e in log)
    start = log[0]
    assert (start["model"], start["epochs"], start["batches_per_epoch"], start["batch_size"],
            start["resumed"]) == ("mlp", 2, 12, 32, False)
    assert start["config"] == run.config
    assert [(e["epoch"], e["batch"]) for e in log if e["type"] == "batch"] == \
        [(1, 10), (1, 12), (2, 10), (2, 12)]
    assert [{k: v for k, v in e.items() if k not in ("type", "time")}
            for e in log if e["type"] == "epoch"] == run.history
    assert log[-1]["status"] == "finished"


def test_batch_events_average_since_the_previous_one(logged):
    _, rec, log = logged
    batch_events = [e for e in log if e["type"] == "batch"]
    spans = [(0, 10), (10, 12), (12, 22), (22, 24)]
    for event, (a, b) in zip(batch_events, spans):
        infos = rec.infos[a:b]
        n = sum(i["samples"] for i in infos)
        assert event["loss"] == pytest.approx(sum(i["loss"] * i["samples"] for i in infos) / n)
        assert event["accuracy"] == pytest.approx(
            sum(i["accuracy"] * i["samples"] for i in infos) / n)
        assert event["lr"] == 0.1 and event["samples_per_s"] > 0 and event["eta_s"] >= 0
    assert batch_events[-1]["eta_s"] == 0


def test_norms_are_the_weights_and_gradients_l2_norms(logged):
    run, rec, log = logged
    last = [e for e in log if e["type"] == "batch"][-1]["norms"]
    weights = checkpoint.load_checkpoint(run.out / "checkpoint.npz").model_state
    assert set(last) == set(weights)
    for name, w in weights.items():
        assert last[name]["weight"] == pytest.approx(np.linalg.norm(w.astype(np.float64)),
                                                     rel=1e-12)
        grad = rec.grads[-1][name].astype(np.float64)
        assert last[name]["grad"] == pytest.approx(np.linalg.norm(grad), rel=1e-12)


def test_a_resumed_run_appends_and_says_so(logged, tmp_path):
    out = tmp_path / "r"
    sn.train("mlp", epochs=1, out=str(out), **QUICK)
    with open(out / "events.jsonl", "a") as f:
        f.write('{"type": "batch", "ep')  # a writer killed mid-line
    sn.run.Run.resume(out).train(epochs=2, no_progress=True)
    log = events.read(out / "events.jsonl")
    starts = [e for e in log if e["type"] == "start"]
    assert [s["resumed"] for s in starts] == [False, True] and starts[1]["epochs"] == 2
    assert [e["epoch"] for e in log if e["type"] == "epoch"] == [1, 2]


class FakeRun:
    config = {"model": "m", "epochs": 1, "batch_size": 2}
    batches_per_epoch, resumed, history = 1, False, []

    def __init__(self, out):
        self.out = out
        self.model = sn.nn.Linear(2, 1)


def test_nan_and_inf_are_written_as_null(tmp_path):
    run, log = FakeRun(tmp_path), events.EventLog()
    log.on_train_start(run)
    log.on_batch_end(run, {"epoch": 1, "batch": 1, "batches": 1, "loss": math.nan,
                           "accuracy": 0.5, "samples": 2, "lr": math.inf, "seconds": 0.1})
    log.on_train_end(run, "failed")
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    batch = json.loads(lines[1])  # strict JSON: no NaN
    assert batch["loss"] is None and batch["lr"] is None and batch["accuracy"] == 0.5
    assert batch["norms"]["weight"]["grad"] is None


def test_speed_leaves_out_the_first_batch_which_may_compile(logged):
    _, rec, log = logged
    first = [e for e in log if e["type"] == "batch"][0]
    infos = rec.infos[:10]
    timed = infos[-1]["seconds"] - infos[0]["seconds"]  # batches 2..10
    assert first["samples_per_s"] == pytest.approx(sum(i["samples"] for i in infos[1:]) / timed)
