"""What every kernel module shares: the one way work is split across threads, flat views, and
a convolution's table of tap offsets.

Every parallel kernel in this backend comes as a serial ``*_span`` function over items
[lo, hi) and a ``*_parallel`` driver whose ``prange`` hands one contiguous range of items to
each of ``chunks`` threads; :func:`chunks_for` decides how many, :func:`launch` runs one pair,
and :func:`run_parallel` every ``prange`` kernel, so that a worker's exception surfaces as itself.
While a compile helper builds the ``prange`` drivers (precompile.py), :func:`run_split` runs a
driver's chunks in turn on this thread instead: the same split, so the same numbers. In the
helper, :func:`recorded_calls` notes the kernel calls of a step for it to compile, in the
order it chooses, without taking the step.

Kernels call BLAS through ``np.dot`` from inside ``prange``, so the BLAS that Numba calls
(SciPy's) is held to one thread here: Numba's pool is then the only one that runs, as two
busy-waiting pools on the same cores slow each other down several times over.
"""
import math
import os
import threading

import numba
import numpy as np
from numba import njit

from .precompile import helper_running

__all__ = ["PARALLEL_MIN_WORK", "chunks_for", "run_parallel", "run_split", "launch", "flat",
           "scratch_arrays", "recorded_calls", "tap_offsets"]

# element operations below which a kernel stays on the calling thread: waking Numba's
# workers costs more than such work
PARALLEL_MIN_WORK = 1 << 17


def chunks_for(items, work):
    """How many threads share ``items`` independent items costing ``work`` operations in all."""
    if work < PARALLEL_MIN_WORK:
        return 1
    return max(1, min(numba.get_num_threads(), items))


def run_parallel(parallel, *args):
    """Call the ``prange`` kernel ``parallel``; an exception raised in a worker is re-raised as
    itself (Numba reports it as a SystemError whose cause it is), so it names its op."""
    try:
        return parallel(*args)
    except SystemError as error:
        if isinstance(error.__cause__, Exception):
            raise error.__cause__ from None
        raise


# the calls noted while recorded_calls walks a step; None otherwise
_noted = None


def recorded_calls(take_step):
    """Call ``take_step()`` with the kernel calls of :func:`launch` and :func:`run_split` noted
    instead of made; returns the notes in call order, as (serial, parallel) pairs of functions
    of no arguments that compile, when called, the serial kernel of a call and its ``prange``
    driver (None where the call would stay serial).

    Why: a compile helper (precompile.py) can then compile a step's kernels in any order,
    without compiling the forward pass before it can reach the backward one. The step computes
    nothing (the arrays it passes on hold whatever np.empty left there), so ``serial`` runs
    its kernel on an empty range or, for run_split, thread 0's share of those unset arrays:
    run_split's kernels address memory by the arrays' sizes, and check the saved indices they
    read (raising IndexError).
    """
    global _noted
    _noted = []
    try:
        take_step()
        return _noted
    finally:
        _noted = None


def run_split(parallel, chunk, chunks, *args):
    """``parallel(*args, chunks)``, whose ``prange`` does ``chunk(t)``'s work for t < chunks;
    for one chunk, or while a compile helper runs, ``chunk(t)`` for each t in turn on this
    thread instead."""
    if _noted is not None:
        _noted.append((lambda: chunk(0), (lambda: parallel(*args, 0)) if chunks > 1 else None))
        return
    if chunks == 1 or helper_running():
        for t in range(chunks):
            chunk(t)
    else:
        run_parallel(parallel, *args, chunks)


def launch(span, parallel, items, work, *args):
    """Run ``span(*args, 0, items)``, or ``parallel(*args, chunks)`` when ``work`` is large.

    For these kernels every item's result is independent of the split, so while a compile
    helper runs the whole range goes to the span on this thread."""
    chunks = chunks_for(items, work)
    if _noted is not None:
        _noted.append((lambda: span(*args, 0, 0),
                       (lambda: parallel(*args, 0)) if chunks > 1 else None))
        return
    if chunks <= 1 or helper_running():
        span(*args, 0, items)
    else:
        run_parallel(parallel, *args, chunks)


def flat(a):
    """A C-contiguous 1-D view of ``a`` (a copy only when ``a`` is not contiguous)."""
    return np.ascontiguousarray(a).reshape(-1)


@njit(cache=True, inline="always")
def tap_offsets(C, H, W, KH, KW):
    """(C·KH·KW,) int64: tap r = (c·KH + kh)·KW + kw's offset (c·H + kh)·W + kw in a sample
    (C, H, W), for kernels that loop over a convolution's taps as one flat loop."""
    shifts = np.empty(C * KH * KW, np.int64)
    r = 0
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                shifts[r] = (c * H + kh) * W + kw
                r += 1
    return shifts


# every array scratch_arrays hands out starts on a cache line
_ALIGN = 64

_workspace = threading.local()

# layouts of scratch_arrays remembered per thread
_MAX_LAYOUTS = 64


def scratch_arrays(shapes, dtype, zeroed):
    """Arrays of these shapes and ``dtype``, laid out in one buffer that the calling Python
    thread reuses from call to call; those whose ``zeroed`` flag is set are filled with 0.

    Why: a fresh large array is fresh pages, each a page fault on first touch (wherever the C
    library returns big blocks to the system on free: glibc's default, see allocator.py), and
    for a small layer those faults cost more than its kernels. The arrays stay valid until this
    thread's next call: for an op's own scratch, never for anything it returns.
    """
    key = (tuple(shapes), np.dtype(dtype))
    views = getattr(_workspace, "views", {})
    arrays = views.get(key)
    if arrays is None:
        arrays = _carve(shapes, np.dtype(dtype))
        views = _workspace.views  # _carve may have started a new buffer and forgotten the old
        if len(views) >= _MAX_LAYOUTS:  # a model's layers need a handful: bound odd callers
            views.clear()
        views[key] = arrays
    for a, zero in zip(arrays, zeroed):
        if zero:
            a.fill(0)
    return arrays


def _carve(shapes, dtype):
    """Views of this thread's buffer (grown first where too small) for scratch_arrays."""
    sizes = [math.prod(shape) * dtype.itemsize for shape in shapes]
    total = sum(sizes) + _ALIGN * (len(sizes) + 1)
    buffer = getattr(_workspace, "buffer", None)
    if buffer is None or buffer.size < total:
        # views of the old buffer keep it alive: forget them with it
        buffer = _workspace.buffer = np.empty(total, np.uint8)
        _workspace.views = {}
    at = -buffer.ctypes.data % _ALIGN
    arrays = []
    for shape, size in zip(shapes, sizes):
        arrays.append(buffer[at:at + size].view(dtype).reshape(shape))
        at += -(-size // _ALIGN) * _ALIGN
    return arrays


def _single_threaded_blas():
    """Hold the BLAS behind Numba's ``np.dot`` (SciPy's) to one thread; numpy's keeps its own.

    Where SciPy's BLAS cannot be told apart from numpy's (one shared library), both are held.
    """
    import scipy
    import scipy.linalg.cython_blas  # noqa: F401  (loads the library Numba calls)
    from threadpoolctl import ThreadpoolController

    controller = ThreadpoolController().select(user_api="blas")
    site = os.path.dirname(os.path.dirname(os.path.abspath(scipy.__file__)))
    scipy_libs = [lib["filepath"] for lib in controller.info()
                  if os.path.relpath(lib["filepath"], site).startswith("scipy")]
    if scipy_libs:
        controller = controller.select(filepath=scipy_libs)
    controller.limit(limits=1)


_single_threaded_blas()
