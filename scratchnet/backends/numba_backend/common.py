"""What every kernel module shares: the one way work is split across threads, and flat views.

Every parallel kernel in this backend comes as a serial ``*_span`` function over items
[lo, hi) and a ``*_parallel`` driver whose ``prange`` hands one contiguous range of items to
each of ``chunks`` threads. :func:`launch` picks between them.
"""
import numba
import numpy as np

__all__ = ["PARALLEL_MIN_WORK", "launch", "flat"]

# element operations below which a kernel stays on the calling thread: waking Numba's
# workers costs more than such work
PARALLEL_MIN_WORK = 1 << 17


def launch(span, parallel, items, work, *args):
    """Run ``span(*args, 0, items)``, or ``parallel(*args, chunks)`` when ``work`` is large."""
    chunks = 1 if work < PARALLEL_MIN_WORK else min(numba.get_num_threads(), items)
    if chunks <= 1:
        span(*args, 0, items)
    else:
        parallel(*args, chunks)


def flat(a):
    """A C-contiguous 1-D view of ``a`` (a copy only when ``a`` is not contiguous)."""
    return np.ascontiguousarray(a).reshape(-1)
