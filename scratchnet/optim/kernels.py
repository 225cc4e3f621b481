"""Numba update kernel for SGD: the numpy update's arithmetic, one pass per parameter.

Why: the numpy update walks each parameter up to six times and allocates temporaries
(widecnn's 4M parameters), at several Python-level array calls per parameter. The kernel does,
per element, exactly the operations of the numpy code in sgd.py, in the same order and in the
parameter's dtype (each Python scalar is first cast to that dtype, as numpy does with a Python
float against a float32 array), so the results are bitwise those of the numpy path
(tests/test_optim.py checks both against torch, tests/test_perf_paths.py checks them equal).
No ``fastmath``: LLVM then never contracts a multiply and an add into an FMA, which would change
the rounding. digitcnn's 8 parameters: 75 µs per step instead of 190 µs.

Adam keeps its numpy update: the same kind of kernel for it was no faster here (its sqrt and
two divisions per element stayed scalar without ``fastmath``, ~3.5 ns per element, about what
numpy's vectorised passes cost).

Used when the numba backend is selected and the JIT is enabled; the numpy backend keeps the
readable numpy update.
"""
import numba
import numpy as np
from numba import njit, prange

from .. import backend

# the numba backend picks the thread pool before any parallel kernel runs (threads.py)
from ..backends.numba_backend import threads  # noqa: F401

__all__ = ["available", "sgd_update"]

# elements below which an update stays on the calling thread (a memory-bound pass over 1M
# float32 is ~0.5 ms; waking the pool costs tens of µs idle, more on a busy machine)
PARALLEL_MIN_ELEMENTS = 1 << 20
# without momentum the numpy update is a single expression; below this size its two Python-level
# calls cost less than the kernel's dispatch
MIN_ELEMENTS_PLAIN = 1 << 15


def available(p):
    """True when the kernels can update Parameter ``p`` in place (numba backend, JIT on)."""
    if numba.config.DISABLE_JIT or backend.get_backend() != "numba":
        return False
    d, g = p.data, p.grad
    return (d.flags.c_contiguous and d.flags.writeable and g.dtype == d.dtype
            and g.shape == d.shape and d.dtype.type in (np.float32, np.float64))


@njit(cache=True)
def _sgd_span(p, g, buf, neg_lr, momentum, one_minus_damp, wd, use_wd, use_momentum, first,
              nesterov, maximize, lo, hi):
    # sliced first: the index is provably >= 0, so no negative-index wrapping in the loop
    p, g = p[lo:hi], g[lo:hi]
    if use_momentum:
        buf = buf[lo:hi]
    for i in range(p.size):
        gi = g[i]
        if maximize:
            gi = -gi
        if use_wd:
            gi = gi + wd * p[i]
        if use_momentum:
            if first:
                b = gi
            else:
                # buf *= momentum; buf += (1 - dampening) * grad
                b = buf[i] * momentum + one_minus_damp * gi
            buf[i] = b
            if nesterov:
                gi = gi + momentum * b
            else:
                gi = b
        p[i] = p[i] + neg_lr * gi


@njit(cache=True, parallel=True)
def _sgd_parallel(p, g, buf, neg_lr, momentum, one_minus_damp, wd, use_wd, use_momentum, first,
                  nesterov, maximize, chunks):
    n = p.size
    for c in prange(chunks):
        _sgd_span(p, g, buf, neg_lr, momentum, one_minus_damp, wd, use_wd, use_momentum, first,
                  nesterov, maximize, c * n // chunks, (c + 1) * n // chunks)


def _chunks(n):
    return 1 if n < PARALLEL_MIN_ELEMENTS else numba.get_num_threads()


def sgd_update(p, grad, buf, lr, momentum, dampening, weight_decay, first, nesterov, maximize):
    """In place: SGD's update of ``p`` (and ``buf`` when momentum != 0), as SGD.step's numpy code.

    p, grad, buf: C-contiguous arrays of one dtype (buf of p's shape; ignored without momentum).
    ``first``: buf is initialised to the gradient, as torch does on a parameter's first step.
    """
    t = p.dtype.type
    pf, gf = p.reshape(-1), np.ascontiguousarray(grad).reshape(-1)
    bf = buf.reshape(-1) if buf is not None else pf[:0]
    args = (pf, gf, bf, t(-lr), t(momentum), t(1 - dampening), t(weight_decay),
            weight_decay != 0, momentum != 0, bool(first), bool(nesterov), bool(maximize))
    chunks = _chunks(pf.size)
    if chunks <= 1:
        _sgd_span(*args, 0, pf.size)
    else:
        _sgd_parallel(*args, chunks)
