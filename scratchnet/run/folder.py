"""A run folder: checking it before any work, and writing its checkpoint, metrics and plots.

    checkpoint.npz   weights, optimizer and scheduler state, RNG states, progress, config
    metrics.json     config, one record per epoch, and the test report once finished
    events.jsonl     what training observed, line by line (:mod:`scratchnet.events`)
    curves.png, predictions.png, confusion_matrix.png
"""
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from .. import checkpoint
from ..fileio import atomic_write
from ..jsonsafe import finite
from .settings import SettingsError

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.json"
EVENTS = "events.jsonl"


def default_out(model):
    """runs/MODEL-YYYYmmdd-HHMMSS, with -2, -3, ... when that exists already."""
    base = os.path.join("runs", f"{model}-{time.strftime('%Y%m%d-%H%M%S')}")
    out, n = base, 1
    while os.path.exists(out):
        n += 1
        out = f"{base}-{n}"
    return out


def check_usable(out):
    """SettingsError unless ``out`` is, or can be made, a folder this process can write in.

    Creates nothing: a folder that does not exist yet is tried by making and removing a
    temporary folder in its nearest existing parent.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SettingsError(f"out={out}: is a file, not a folder")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise SettingsError(f"out={out}: cannot be created: {existing} is a file")
    try:
        shutil.rmtree(tempfile.mkdtemp(dir=existing, prefix=".scratchnet-check-"))
    except OSError as e:
        what = "written in" if existing == out else f"created ({existing} is not writable)"
        raise SettingsError(f"out={out}: cannot be {what}: {e.strerror or e}") from None
    return out


def save(out, meta, model_state, optimizer_state, metrics):
    """Write checkpoint.npz (``meta`` plus the arrays) and metrics.json, each atomically."""
    os.makedirs(out, exist_ok=True)
    checkpoint.save_checkpoint(os.path.join(out, CHECKPOINT), meta, model_state,
                               optimizer_state)
    text = json.dumps(finite(metrics), indent=2)
    atomic_write(os.path.join(out, METRICS), lambda f: f.write(text.encode()))


def read_metrics(out):
    """metrics.json of the run in ``out`` as a dict."""
    with open(os.path.join(out, METRICS)) as f:
        return json.load(f)


def write_plots(out, title, history, test, images, labels, predictions, matrices, classes):
    """curves.png (when epochs were trained), predictions.png and confusion_matrix.png."""
    from .. import plots  # matplotlib is slow to import; only finished runs need it
    if history:
        batches = plots.read_batch_events(os.path.join(out, EVENTS))
        plots.training_curves(history, os.path.join(out, "curves.png"), title=title, test=test,
                              batches=batches)
    plots.prediction_grid(images, predictions, labels, os.path.join(out, "predictions.png"),
                          classes=classes)
    titles = None if labels.ndim == 1 else ["first digit", "second digit"]
    plots.confusion_matrix_figure(matrices, os.path.join(out, "confusion_matrix.png"),
                                  classes=classes, titles=titles)


def checkpoint_path(path):
    """A run folder means its checkpoint.npz."""
    return os.path.join(path, CHECKPOINT) if os.path.isdir(path) else os.fspath(path)


RUN_FILES = (CHECKPOINT, EVENTS, METRICS)


def is_run_folder(path):
    """Whether ``path`` holds a run: its checkpoint, or the events and metrics a run writes
    before its first checkpoint."""
    return any((Path(path) / name).is_file() for name in RUN_FILES)


def updated(path):
    """Unix time the run in ``path`` last wrote one of its files (0 when it has none)."""
    times = []
    for name in RUN_FILES:
        try:
            times.append((Path(path) / name).stat().st_mtime)
        except OSError:
            pass
    return max(times, default=0.0)


def find(paths=("runs",)):
    """The run folders in or at ``paths`` (a run folder, a checkpoint, or a folder of runs),
    newest first; a run still in its first epoch (events, no checkpoint yet) is one too."""
    found = []
    for path in map(Path, paths):
        if path.is_file():
            found.append(path.parent)
        elif is_run_folder(path):
            found.append(path)
        elif path.is_dir():
            try:
                found += [p for p in sorted(path.iterdir()) if p.is_dir() and is_run_folder(p)]
            except OSError:  # unreadable folder: nothing found in it
                pass
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return sorted(unique, key=updated, reverse=True)
