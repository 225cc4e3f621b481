"""``compile_ahead``: a helper process compiles a training step's parallel kernels while this
process takes its first steps with the serial ones (numpy twin: numpy_backend/precompile.py).

With an empty Numba cache the first step compiles its kernels one after another on one core,
and about half of that time goes to the ``prange`` drivers (common.py), which Numba compiles
around the serial ``*_span`` kernels they call. So, when the cache is cold,
``compile_ahead(model, x, optimizer)`` starts a fresh Python process with a copy of the model,
the batch and the optimizer, which puts the step's kernels in Numba's on-disk cache
(``cache=True``) and exits. Until it has exited, :func:`helper_running` is true and
``common.run_split`` runs each driver's chunks in turn on the calling thread: this process
compiles only the serial kernels (the ones the drivers call, under the same signatures), with
the same split of the work, so the same numbers; once the helper is done the drivers load from
the cache.

The helper does not take the step: it notes the step's kernel calls
(``common.recorded_calls``), compiles the serial kernels from the step's end (the optimizer,
then the backward pass), while this process compiles them from its start, and then the
drivers. Each process loads what the other has already put in the cache, so the two meet in
the middle. A model whose own code fails on the noted step's unset values gets the step taken
instead.

A fresh process rather than a fork: a fork of a process whose thread pool has started (GNU
OpenMP's) cannot run parallel kernels. Two processes may write one kernel's cache entry at
once, which Numba's cache index survives only when both write the same signature, so a kernel
must take one signature per dtype whichever path (serial or a driver) calls it. A helper that
fails is reported with a
warning when it ends; this process then compiles what it needs itself.
"""
import atexit
import os
import pickle
import subprocess
import sys
import tempfile
import time
import warnings

import numba
import numpy as np
from numba import njit

__all__ = ["compile_ahead", "finish_compile_ahead"]

# a helper still running after this long is stopped (a step's kernels compile in well under it)
HELPER_LIMIT_S = 600

# the helper reads this process's import path, then the step (see helper_main), from the file
# named by its argument
_HELPER_CODE = ("import pickle, sys\n"
                "with open(sys.argv[1], 'rb') as f:\n"
                "    sys.path[:] = pickle.load(f)\n"
                "    from scratchnet.backends.numba_backend.precompile import helper_main\n"
                "    step = f.read()\n"
                "helper_main(step)")

_helpers = []  # the running helpers: (Popen, its stderr file, its step's file, deadline)
_started = set()  # (model id, batch shape, dtype) already given a helper in this process


@njit(cache=True)
def _cache_probe():
    """Compiled, or loaded when Numba's cache already holds this backend's kernels."""
    return 0


def cache_is_cold():
    """Whether Numba's on-disk cache lacked :func:`_cache_probe` (so, most likely, the rest)."""
    _cache_probe()
    return sum(_cache_probe.stats.cache_misses.values()) > 0


def enabled():
    """Whether a helper is worth starting: the JIT on, several threads, a cold cache (a warm one
    loads in well under a second), not switched off by SCRATCHNET_COMPILE_AHEAD=0."""
    return (not numba.config.DISABLE_JIT and numba.get_num_threads() > 1
            and os.environ.get("SCRATCHNET_COMPILE_AHEAD", "1") != "0" and cache_is_cold())


def compile_ahead(model, x, optimizer=None, loss=None):
    """Start a helper process that compiles the training step on batch ``x`` (the real batch:
    its size picks serial or parallel kernels); returns at once.

    loss: accepted for the training loop's call; the helper starts backward from ones shaped as
    the output (the loss's own kernels are serial: this process compiles them).
    Does nothing when the model already had a helper for this batch shape, or when
    :func:`enabled` is false.
    """
    x = np.asarray(x)
    key = (id(model), x.shape, x.dtype.str)
    if key in _started or not enabled():
        return
    _started.add(key)
    payload = _write_step(model, x, optimizer)
    if payload is None:
        return
    stderr = tempfile.TemporaryFile()
    try:
        helper = subprocess.Popen([sys.executable, "-c", _HELPER_CODE, payload],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=stderr)
    except OSError as error:
        _close((None, stderr, payload, None))
        _report(f"could not start ({error})")
        return
    _helpers.append((helper, stderr, payload, time.monotonic() + HELPER_LIMIT_S))


def _write_step(model, x, optimizer):
    """The path of a new file holding what the helper reads, or None when the step does not
    pickle (e.g. a model holding a lambda: this process then compiles everything itself).

    A file rather than a pipe, which would hold this process until the helper had read it.
    """
    with tempfile.NamedTemporaryFile(suffix=".pickle", delete=False) as payload:
        try:
            pickle.dump(list(sys.path), payload)
            pickle.dump((model, x, optimizer, numba.get_num_threads()), payload,
                        protocol=pickle.HIGHEST_PROTOCOL)
            return payload.name
        except (pickle.PicklingError, TypeError, AttributeError):
            pass
    os.unlink(payload.name)
    return None


def helper_main(step):
    """In the helper: unpickle (model, x, optimizer, threads) from ``step``; compile the step's
    serial kernels, last first, then its drivers."""
    from ... import backend
    from ...nn.module import backward_to_params
    from .common import recorded_calls

    if hasattr(os, "nice"):
        # the helper only uses a spare core: on a busy machine the step waiting here comes first
        os.nice(10)
    model, x, optimizer, threads = pickle.loads(step)
    backend.set_backend("numba")
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))

    def take_step():
        out = model(x)
        if optimizer is not None:
            optimizer.zero_grad()
        backward_to_params(model, _ones_like(out))
        if optimizer is not None:
            optimizer.step()

    try:
        calls = recorded_calls(take_step)
    except Exception:  # whatever a model's own code raises on unset values
        # a forward pass that reads its values (the walk's arrays hold none): take the step
        take_step()
        return
    for serial, _ in reversed(calls):
        try:
            serial()
        except IndexError:  # a saved index in the unset arrays, checked after compiling
            pass
    for _, parallel in calls:
        if parallel is not None:
            parallel()


def _ones_like(out):
    """Ones shaped as the model's output: an array, or a tuple of them (several heads)."""
    if isinstance(out, (tuple, list)):
        return tuple(_ones_like(o) for o in out)
    return np.ones_like(out)


def helper_running():
    """Whether a helper is still compiling (reaps and reports the ones that have ended)."""
    if not _helpers:
        return False
    for entry in list(_helpers):
        helper, stderr, _, deadline = entry
        code = helper.poll()
        if code is None and time.monotonic() <= deadline:
            continue
        if code is None:
            helper.kill()
            helper.wait()
            _report(f"ran past {HELPER_LIMIT_S} s and was stopped")
        elif code != 0:
            stderr.seek(0)
            error = stderr.read()[-4000:].decode(errors="replace").strip()
            _report(f"failed (exit {code}):\n{error}")
        _close(entry)
        _helpers.remove(entry)
    return bool(_helpers)


def finish_compile_ahead():
    """Wait for every helper to end (e.g. before timing steps: a helper takes a core and keeps
    this process's kernels serial while it runs)."""
    while helper_running():
        time.sleep(0.01)


def _report(what):
    warnings.warn(f"compile_ahead: the helper process {what}; the kernels it did not compile "
                  f"compile in this process", RuntimeWarning, stacklevel=3)


@atexit.register
def _stop_helpers():
    """A helper outliving this process would only keep compiling for nobody."""
    for entry in _helpers:
        entry[0].kill()
        entry[0].wait()
        _close(entry)
    _helpers.clear()


def _close(entry):
    """Release an ended helper's stderr file and its step's file."""
    _, stderr, payload, _ = entry
    stderr.close()
    os.unlink(payload)
