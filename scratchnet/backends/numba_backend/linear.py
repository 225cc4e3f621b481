"""Fully connected layer: blocks split across threads, each calling single-threaded GEMM.

BLAS is pinned to one thread (see blas.py), so the only thread pool is Numba's. Forward and
the input gradient split the batch rows; the weight and bias gradients split the output
features (``dW[o0:o1] = dout[:, o0:o1]ᵀ·x`` over the whole batch), so every thread writes its
own slice and nothing is summed afterwards. (Splitting dW by rows instead gave each thread a
full-size partial from a GEMM with K = N / threads, then a sum: widecnn's fc1 backward took
9 ms for that.)
"""
import numba
import numpy as np
from numba import njit, prange

from . import activation
from .blas import gemm

__all__ = ["linear_forward", "linear_backward"]

# a block must be tall enough to be worth its own dW partial (out × in)
_MIN_ROWS_PER_BLOCK = 16
# multiply-adds per element-operation of PARALLEL_MIN_WORK: a GEMM does ~64 multiply-adds in
# the time an elementwise kernel handles one element, so below 64·PARALLEL_MIN_WORK (8M) the
# product takes less time on one thread than waking the pool does (tens of µs when idle, ms
# when the cores are busy): the MLPs at batch 32 never launch it
GEMM_WORK_FACTOR = 32


def _num_blocks(n, work):
    if work < activation.PARALLEL_MIN_WORK * GEMM_WORK_FACTOR:
        return 1
    return max(1, min(numba.get_num_threads(), n // _MIN_ROWS_PER_BLOCK))


# OpenBLAS handles a product with few output columns (the classifier heads: 10) badly when it
# is tall: x (1000, 784)·wᵀ (784, 10) ran at 32 GFLOP/s in one call and 1.7x faster as
# 64-row pieces (each piece of x stays in cache while the kernel sweeps it); above ~16 columns
# one tall call is fastest (measured on the 2-core target, numpy's OpenBLAS, one thread)
NARROW_OUTPUTS = 16
NARROW_ROWS = 64


@njit(cache=True)
def _forward_block(x, w, b, has_bias, out, r0, r1):
    if has_bias:
        for i in range(r0, r1):  # element loops: a slice assignment compiles seconds slower
            for j in range(b.size):
                out[i, j] = b[j]
    # out[r0:r1] = x[r0:r1]·wᵀ + out[r0:r1] (beta 1 adds the bias, as torch's addmm does)
    beta = 1.0 if has_bias else 0.0
    step = NARROW_ROWS if w.shape[0] <= NARROW_OUTPUTS else max(r1 - r0, 1)
    for c0 in range(r0, r1, step):
        c1 = min(c0 + step, r1)
        gemm(x[c0:c1], w, out[c0:c1], False, True, 1.0, beta)


@njit(cache=True, parallel=True)
def _forward_parallel(x, w, b, has_bias, out, blocks):
    N = x.shape[0]
    for t in prange(blocks):
        _forward_block(x, w, b, has_bias, out, t * N // blocks, (t + 1) * N // blocks)


@njit(cache=True)
def _backward_block(dout, x, w, dx, dw, db, t, blocks, has_bias, input_grad):
    """Block t of blocks: dW and db for features [o0, o1), dx for rows [r0, r1)."""
    N, O = dout.shape
    o0, o1 = t * O // blocks, (t + 1) * O // blocks
    gemm(dout[:, o0:o1], x, dw[o0:o1], True, False, 1.0, 0.0)
    if has_bias:
        for j in range(o0, o1):
            s = 0.0  # float64, as the conv kernels sum their bias gradients
            for i in range(N):
                s += dout[i, j]
            db[j] = s
    if input_grad:
        r0, r1 = t * N // blocks, (t + 1) * N // blocks
        gemm(dout[r0:r1], w, dx[r0:r1], False, False, 1.0, 0.0)


@njit(cache=True, parallel=True)
def _backward_parallel(dout, x, w, dx, dw, db, has_bias, input_grad, blocks):
    for t in prange(blocks):
        _backward_block(dout, x, w, dx, dw, db, t, blocks, has_bias, input_grad)


def linear_forward(x, w, b):
    """x: (N, in), w: (out, in), b: (out,) or None. Returns out (N, out) and a cache."""
    x = np.ascontiguousarray(x)
    w = np.ascontiguousarray(w)
    N = x.shape[0]
    has_bias = b is not None
    bias = np.ascontiguousarray(b) if has_bias else np.zeros(w.shape[0], dtype=x.dtype)
    # zeros, not empty: blas.gemm's pure-Python fallback (NUMBA_DISABLE_JIT=1) reads c even
    # when beta is 0, and 0·NaN garbage would be NaN
    out = np.zeros((N, w.shape[0]), dtype=x.dtype)
    blocks = _num_blocks(N, x.size * w.shape[0])
    if blocks == 1:
        _forward_block(x, w, bias, has_bias, out, 0, N)
    else:
        _forward_parallel(x, w, bias, has_bias, out, blocks)
    return out, (x, w, b)


def linear_backward(dout, cache, input_grad=True):
    """dout: (N, out). Returns dx (N, in), dw (out, in), db (out,) or None when b is None.

    input_grad False: dx is not computed and returned as None (half the work of a first layer).
    """
    x, w, b = cache
    dout = np.ascontiguousarray(dout)
    N = x.shape[0]
    work = (2 if input_grad else 1) * x.size * w.shape[0]
    blocks = 1 if work < activation.PARALLEL_MIN_WORK * GEMM_WORK_FACTOR else \
        numba.get_num_threads()
    # zeros: see linear_forward; a (N, 0) stand-in the kernels never touch without input_grad
    dx = np.zeros(x.shape if input_grad else (N, 0), dtype=dout.dtype)
    dw = np.zeros(w.shape, dtype=dout.dtype)
    db = np.zeros(w.shape[0], dtype=dout.dtype)
    has_bias = b is not None
    if blocks == 1:
        _backward_block(dout, x, w, dx, dw, db, 0, 1, has_bias, input_grad)
    else:
        _backward_parallel(dout, x, w, dx, dw, db, has_bias, input_grad, blocks)
    return (dx if input_grad else None), dw, (db if has_bias else None)
