"""Fully connected layer (numpy twin: numpy_backend/linear.py): GEMMs split across threads.

    out = x·wᵀ + b        dx = dout·w        dw = doutᵀ·x        db = Σ_n dout[n]

Each thread runs single-threaded BLAS (``np.dot``, see common.py) on its own block: rows of x
for the forward pass and for dx, output features for dw and db, so every thread writes its
own part and nothing is summed afterwards.
"""
import numpy as np
from numba import njit, prange

from .common import chunks_for, run_parallel

__all__ = ["linear_forward", "linear_backward"]


@njit(cache=True)
def _forward_block(x, w, b, has_bias, out, t, blocks):
    """Rows [r0, r1) of out = x·wᵀ + b, block t of blocks."""
    N = x.shape[0]
    r0, r1 = t * N // blocks, (t + 1) * N // blocks
    np.dot(x[r0:r1], w.T, out[r0:r1])
    if has_bias:
        for i in range(r0, r1):
            for j in range(out.shape[1]):
                out[i, j] += b[j]


@njit(cache=True, parallel=True)
def _forward_parallel(x, w, b, has_bias, out, blocks):
    for t in prange(blocks):
        _forward_block(x, w, b, has_bias, out, t, blocks)


@njit(cache=True)
def _backward_block(dout, x, w, input_grad, dx, dw, db, dout_t, t, blocks):
    """Block t of blocks: dw and db for features [o0, o1), dx for rows [r0, r1).

    dout_t (O, N): scratch for doutᵀ, whose rows [o0, o1) this block fills for its GEMM.
    """
    N, O = dout.shape
    o0, o1 = t * O // blocks, (t + 1) * O // blocks
    r0, r1 = t * N // blocks, (t + 1) * N // blocks
    for j in range(o0, o1):
        s = 0.0  # float64, as the conv kernels sum their bias gradients
        for i in range(N):
            dout_t[j, i] = dout[i, j]
            s += dout[i, j]
        db[j] = s
    np.dot(dout_t[o0:o1], x, dw[o0:o1])
    if input_grad:
        np.dot(dout[r0:r1], w, dx[r0:r1])


@njit(cache=True, parallel=True)
def _backward_parallel(dout, x, w, input_grad, dx, dw, db, dout_t, blocks):
    for t in prange(blocks):
        _backward_block(dout, x, w, input_grad, dx, dw, db, dout_t, t, blocks)


def _usable(*arrays):
    """BLAS through np.dot wants non-empty float arrays of one dtype."""
    return all(a.size and a.dtype == arrays[0].dtype for a in arrays) \
        and arrays[0].dtype in (np.float32, np.float64)


def linear_forward(x, w, b):
    """x: (N, in), w: (out, in), b: (out,) or None. Returns out (N, out) and a cache."""
    x = np.ascontiguousarray(x)
    w = np.ascontiguousarray(w)
    if not _usable(x, w):
        out = x @ w.T
        if b is not None:
            out += b
        return out, (x, w, b)
    N, O = x.shape[0], w.shape[0]
    has_bias = b is not None
    bias = np.ascontiguousarray(b, dtype=x.dtype) if has_bias else np.zeros(O, x.dtype)
    out = np.empty((N, O), dtype=x.dtype)
    blocks = chunks_for(N, x.size * O)
    if blocks == 1:
        _forward_block(x, w, bias, has_bias, out, 0, 1)
    else:
        run_parallel(_forward_parallel, x, w, bias, has_bias, out, blocks)
    return out, (x, w, b)


def linear_backward(dout, cache, input_grad=True):
    """dout: (N, out). Returns dx (N, in), dw (out, in), db (out,) or None when b is None.

    input_grad False: dx is not computed and returned as None (half the work of a first layer).
    """
    x, w, b = cache
    dout = np.ascontiguousarray(dout)
    if not _usable(dout, x, w):
        dx = dout @ w if input_grad else None
        return dx, dout.T @ x, (dout.sum(axis=0) if b is not None else None)
    N, O = dout.shape
    dx = np.empty(x.shape if input_grad else (0, 0), dtype=dout.dtype)
    dw = np.empty(w.shape, dtype=dout.dtype)
    db = np.empty(O, dtype=dout.dtype)
    dout_t = np.empty((O, N), dtype=dout.dtype)
    # the same blocks with or without dx: OpenBLAS rounds an entry by the shape of its product
    blocks = chunks_for(min(N, O), x.size * O)
    if blocks == 1:
        _backward_block(dout, x, w, input_grad, dx, dw, db, dout_t, 0, 1)
    else:
        run_parallel(_backward_parallel, dout, x, w, input_grad, dx, dw, db, dout_t, blocks)
    return (dx if input_grad else None), dw, (db if b is not None else None)
