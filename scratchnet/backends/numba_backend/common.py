"""What every kernel module shares: the one way work is split across threads, and flat views.

Every parallel kernel in this backend comes as a serial ``*_span`` function over items
[lo, hi) and a ``*_parallel`` driver whose ``prange`` hands one contiguous range of items to
each of ``chunks`` threads; :func:`chunks_for` decides how many, :func:`launch` runs one pair,
and :func:`run_parallel` every ``prange`` kernel, so that a worker's exception surfaces as itself.
While a compile helper builds the ``prange`` drivers (precompile.py), :func:`run_split` runs a
driver's chunks in turn on this thread instead: the same split, so the same numbers.

Kernels call BLAS through ``np.dot`` from inside ``prange``, so the BLAS that Numba calls
(SciPy's) is held to one thread here: Numba's pool is then the only one that runs, as two
busy-waiting pools on the same cores slow each other down several times over.
"""
import os

import numba
import numpy as np

from .precompile import helper_running

__all__ = ["PARALLEL_MIN_WORK", "chunks_for", "run_parallel", "run_split", "launch", "flat"]

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


def run_split(parallel, chunk, chunks, *args):
    """``parallel(*args, chunks)``, whose ``prange`` does ``chunk(t)``'s work for t < chunks;
    for one chunk, or while a compile helper runs, ``chunk(t)`` for each t in turn on this
    thread instead."""
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
    if chunks <= 1 or helper_running():
        span(*args, 0, items)
    else:
        run_parallel(parallel, *args, chunks)


def flat(a):
    """A C-contiguous 1-D view of ``a`` (a copy only when ``a`` is not contiguous)."""
    return np.ascontiguousarray(a).reshape(-1)


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
