"""Find the runs and checkpoints under the paths given to ``scratchnet serve``; read their logs.

Each is addressed by an opaque id (a hash of its resolved path), so a client never names a
path: the server looks ids up in what it found itself, which is what keeps it inside the
given folders.
"""
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass

from .. import run as run_layer
from ..run import CHECKPOINT, EVENTS, METRICS
from ..run.folder import updated as folder_updated

TORCH_SUFFIXES = (".pt", ".pth")
WEIGHT_SUFFIXES = (".npz",) + TORCH_SUFFIXES
# the most bytes of events.jsonl one request returns; the client asks again from ``next``
EVENTS_CHUNK = 2 * 1024 * 1024
# seconds without news after which a run that never logged its end is shown as "stale"
STALE_AFTER = 600


@dataclass(frozen=True)
class Run:
    """A run folder (``kind="run"``) or a lone weight file (``kind="checkpoint"``)."""

    id: str
    kind: str
    path: str

    @property
    def name(self):
        return os.path.basename(self.path.rstrip(os.sep)) or self.path

    @property
    def checkpoint(self):
        """The weight file, or None when the run has not saved one yet."""
        if self.kind == "checkpoint":
            return self.path
        path = os.path.join(self.path, CHECKPOINT)
        return path if os.path.isfile(path) else None

    @property
    def events(self):
        return os.path.join(self.path, EVENTS) if self.kind == "run" else None

    @property
    def metrics(self):
        return os.path.join(self.path, METRICS) if self.kind == "run" else None


def _run_id(path):
    return hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:12]


def _is_lone_weights(path):
    """A weight file given by itself: a .pt/.pth, or an .npz that is not a run's checkpoint."""
    return (os.path.isfile(path) and path.lower().endswith(WEIGHT_SUFFIXES)
            and os.path.basename(path) != CHECKPOINT)


def discover(paths):
    """Every run under ``paths`` (run folders, as :func:`scratchnet.run.find` finds them, a
    run's checkpoint.npz meaning its folder), and the lone weight files among ``paths``."""
    found = {}
    lone = [p for p in map(str, paths) if _is_lone_weights(p)]
    folders = [p for p in map(str, paths) if os.path.isdir(p)
               or (os.path.isfile(p) and os.path.basename(p) == CHECKPOINT)]
    for folder in run_layer.find(folders):
        run = Run(_run_id(folder), "run", str(folder))
        found[run.id] = run
    for path in lone:
        run = Run(_run_id(path), "checkpoint", os.path.abspath(path))
        found[run.id] = run
    return found


def _mtime(path):
    try:
        return os.stat(path).st_mtime
    except (OSError, TypeError):
        return None


def updated(run):
    """Unix time the run last changed (its newest file), or None."""
    if run.kind == "run":
        return folder_updated(run.path) or None
    return _mtime(run.path)


def read_metrics(run):
    """metrics.json as a dict, or None when absent or unreadable (mid-write, damaged)."""
    if run.kind != "run":
        return None
    try:
        data = run_layer.read_metrics(run.path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_events(run, since=0, limit=None):
    """Events from byte offset ``since`` of events.jsonl: ``(events, next_offset, more)``.

    Only whole lines are returned (the writer may be mid-line); ``next_offset`` is where the
    next call starts, and ``more`` says whether whole lines lie beyond this chunk of at most
    ``limit`` bytes (default ``EVENTS_CHUNK``). Lines that are not JSON objects are skipped.
    """
    limit = limit or EVENTS_CHUNK
    path = run.events
    if path is None or not os.path.isfile(path):
        return [], 0, False
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if since > size:  # the log was replaced by a shorter one: start again
            since = 0
        f.seek(since)
        chunk = f.read(limit)
    end = chunk.rfind(b"\n") + 1
    if end == 0 and len(chunk) == limit:  # one line longer than a chunk: skip it
        end = len(chunk)
    events = []
    for line in chunk[:end].splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events, since + end, since + end < size and len(chunk) == limit


def _last_events(run, tail=256 * 1024):
    """The events in (about) the last ``tail`` bytes of the log: enough for a summary."""
    path = run.events
    if path is None or not os.path.isfile(path):
        return []
    size = os.path.getsize(path)
    start = max(0, size - tail)
    events, _, _ = read_events(run, start, tail)
    return events if start == 0 else events[1:]  # the first line may have been cut


def _finite(value):
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def summary(run):
    """What the runs list shows: model, status, epochs done and planned, latest metrics."""
    metrics = read_metrics(run) or {}
    info = {"id": run.id, "name": run.name, "kind": run.kind, "updated": updated(run),
            "has_checkpoint": run.checkpoint is not None,
            "checkpoint_mtime": _mtime(run.checkpoint),
            "has_events": bool(run.events and os.path.isfile(run.events)),
            "model": metrics.get("model"), "status": None, "epoch": None, "epochs": None,
            "test_accuracy": _finite(metrics.get("test_accuracy"))}
    config = metrics.get("config") or {}
    info["epochs"] = config.get("epochs")
    history = metrics.get("epochs") or []
    if history:
        info["epoch"] = history[-1].get("epoch")
    if "test_accuracy" in metrics:
        info["status"] = "finished"
    for event in _last_events(run):
        kind = event.get("type")
        if kind == "start":
            info["model"] = event.get("model", info["model"])
            info["epochs"] = event.get("epochs", info["epochs"])
            info["status"] = "running"
        elif kind in ("batch", "epoch"):
            info["epoch"] = event.get("epoch", info["epoch"])
            if info["status"] is None:
                info["status"] = "running"
        elif kind == "end":
            info["status"] = event.get("status")
    if info["status"] == "running" and time.time() - (info["updated"] or 0) > STALE_AFTER:
        info["status"] = "stale"  # no end event, and silent for long: the process is gone
    return info
