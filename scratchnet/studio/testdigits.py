"""A run's latest checkpoint on a fixed sample of its test set: what the training page shows.

The sample is the same every time (drawn with a fixed seed), so successive checkpoints of a
run can be compared digit by digit; results are cached by the checkpoint's modification time.
"""
import os
import threading

import numpy as np

from . import inference

SAMPLE = 500  # test images evaluated
SHOWN = 48  # of which the page shows the misclassified first, then correct ones
SEED = 0

_cache = {}
_test_sets = {}
_lock = threading.Lock()


def _test_set(loaded):
    """(images uint8 (N, H, W), labels (N,) or (N, 2)) of the test set ``scratchnet evaluate``
    scores the run on (:meth:`scratchnet.run.Run.test_set`)."""
    key = tuple(loaded.config.get(k) for k in ("model", "dataset", "data_dir", "data_seed",
                                               "n_train", "n_test"))
    with _lock:
        if key in _test_sets:
            return _test_sets[key]
    found = loaded.run.test_set()
    with _lock:
        _test_sets[key] = found  # a run's checkpoint changes every epoch, its test set never
        while len(_test_sets) > 4:
            del _test_sets[next(iter(_test_sets))]
    return found


def evaluate(checkpoint_path):
    """The sample's accuracy and the digits to show, each with its label and top predictions."""
    stat = os.stat(checkpoint_path)
    key = (checkpoint_path, stat.st_mtime_ns, stat.st_size)
    with _lock:
        if key in _cache:
            return _cache[key]
    loaded = inference.load(checkpoint_path)
    images, labels = _test_set(loaded)
    rng = np.random.default_rng(SEED)
    index = np.sort(rng.choice(len(images), size=min(SAMPLE, len(images)), replace=False))
    images, labels = images[index], labels[index]
    probs = inference.probabilities(loaded, images)
    if probs.ndim == 2:  # one digit: make it (N, heads=1, 10) like two digits
        probs, labels = probs[:, None], labels[:, None]
    predicted = probs.argmax(axis=2)
    correct = (predicted == labels).all(axis=1)
    wrong = np.flatnonzero(~correct)
    right = np.flatnonzero(correct)
    shown = np.concatenate([wrong[:SHOWN // 2], right])[:SHOWN]
    samples = []
    for i in shown:
        top = [[[int(c), float(p[c])] for c in np.argsort(p)[::-1][:3]] for p in probs[i]]
        samples.append({"index": int(index[i]), "image": inference.encode_image(images[i]),
                        "label": [int(v) for v in labels[i]],
                        "predicted": [int(v) for v in predicted[i]],
                        "top": top, "correct": bool(correct[i])})
    result = {"model": loaded.name, "checkpoint_mtime": stat.st_mtime,
              "evaluated": int(len(index)), "accuracy": float(correct.mean()),
              "misclassified": int(len(wrong)), "samples": samples}
    with _lock:
        for old in [k for k in _cache if k[0] == checkpoint_path]:
            del _cache[old]
        _cache[key] = result
    return result
