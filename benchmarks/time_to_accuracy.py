"""Time to accuracy: one MNIST epoch of digitcnn per framework, wall time and test accuracy.

The digitcnn tutorial's recipe (Adam 1e-3, batch 64, normalise 0.5/0.5). Every side starts
from the same weights and sees the same shuffled batches (the last one partial, as torch's
DataLoader gives); batches are prepared and kernels loaded (one step of a throwaway copy)
before the clock starts. Accuracies agree closely but
not exactly: float32 Adam trajectories drift apart through round-off (PERF_NOTES lesson 5) and
dropout-free digitcnn makes that the only difference.
"""
import time

import numpy as np
import torch

import scratchnet as sn

from . import frameworks, workload

MODEL = "digitcnn"


def _epoch_batches(seed, max_steps):
    images, labels = sn.data.load_mnist("train")
    x, y = workload.prepare(MODEL, images, labels)
    batch = workload.recipe(MODEL).batch_size
    order = np.random.default_rng(seed).permutation(len(x))
    starts = range(0, len(x), batch)
    if max_steps is not None:
        starts = starts[:max_steps]
    return ([np.ascontiguousarray(x[order[s:s + batch]]) for s in starts],
            [np.ascontiguousarray(y[order[s:s + batch]]) for s in starts])


def _accuracy(side, xs, ys):
    side.train(False)
    correct = 0
    for x, y in zip(xs, ys):
        out = side.infer(x)
        pred = out.argmax(1)
        correct += int((pred == y).sum())
    side.train(True)
    return correct / sum(len(y) for y in ys)


def describe(max_steps=None):
    r = workload.recipe(MODEL)
    length = (f"the first {max_steps} steps of one epoch" if max_steps is not None
              else "one epoch of MNIST's 60,000 training images")
    return (f"{MODEL}, {r.describe().split(', ')[0]}, batch {r.batch_size}, normalise "
            f"{r.normalize}, {length}, same initial weights and batch order for every side; "
            f"accuracy on the 10,000 test images; kernels loaded before the clock starts.")


def run(side_names, threads, seed=0, max_steps=None):
    """``{side: {"seconds", "samples_per_s", "test_accuracy", "steps"}}`` for one epoch each."""
    xs, ys = _epoch_batches(seed, max_steps)
    images, labels = sn.data.load_mnist("test")
    tx, ty = workload.prepare(MODEL, images, labels)
    tx, ty = np.split(tx, 10), np.split(ty, 10)
    state = workload.initial_state(MODEL, seed)
    results = {}
    for name in side_names:
        side = frameworks.build(name, MODEL, state, threads)
        train_inputs = frameworks.stack_inputs(side, xs, ys)
        test_inputs = frameworks.stack_inputs(side, tx, ty)
        # one untimed step on a throwaway copy: kernels loaded (JIT is reported separately)
        frameworks.build(name, MODEL, state, threads).train_step(*train_inputs[0])
        side.enter()
        side.sync()
        t0 = time.perf_counter()
        for x, y in train_inputs:
            side.train_step(x, y)
        side.sync()
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            acc = _accuracy(side, *zip(*test_inputs))
        samples = sum(len(y) for y in ys)
        results[name] = {"seconds": seconds, "samples_per_s": samples / seconds,
                         "test_accuracy": acc, "steps": len(xs), "samples": samples}
    return results
