"""Fully connected layer: blocks split across threads, each calling single-threaded GEMM.

BLAS is pinned to one thread (see blas.py), so the only thread pool is Numba's. Forward and
the weight and bias gradients split the output features (thread t computes
``out[:, o0:o1] = x·W[o0:o1]ᵀ + b[o0:o1]`` and ``dW[o0:o1] = dout[:, o0:o1]ᵀ·x``), so every
thread writes its own columns and nothing is summed afterwards; the input gradient splits the
batch rows. Measured on the 2-core target (one thread per half, OpenBLAS sgemm), forward at
mlp128's first layer: one call 125 µs, split by rows 62 µs, split by output features 51 µs;
at batch 1000, 2.5 ms / 1.7 ms / 1.4 ms. (Splitting dW by rows instead gave each thread a
full-size partial from a GEMM with K = N / threads, then a sum: widecnn's fc1 backward took
9 ms for that.) Classifier heads (few outputs) split rows instead, see NARROW_OUTPUTS.
The blocks run as per_thread.py workers: no parallel kernel of its own to compile per layer
type (~1.5-2.3 s each here).
A forward pass over an input that is mostly exact zeros (MNIST pixels in [0, 1]), at 256 rows
or more, skips them instead of running the GEMM: sparse_linear.py says where and why.
"""
import numba
import numpy as np
from numba import njit

from . import per_thread, sparse_linear, vector_linear
from .blas import gemm

__all__ = ["linear_forward", "linear_backward"]

# multiply-adds below which a product stays on the calling thread. A launch of Numba's pool
# costs ~3 µs here while its workers are awake (tens of µs when they sleep, more on a busy
# machine); 256k multiply-adds take ~5 µs on one core, and mlp128's 3.2M-multiply-add layers
# ran 2.4x faster on two threads
PARALLEL_MIN_MACS = 1 << 18
# a thread's share must be at least this many output features (or rows for the narrow heads)
_MIN_PER_BLOCK = 16

# OpenBLAS handles a product with few output columns (the classifier heads: 10) badly when it
# is tall: x (1000, 784)·wᵀ (784, 10) ran at 32 GFLOP/s in one call and 1.7x faster as
# 64-row pieces (each piece of x stays in cache while the kernel sweeps it); above ~16 columns
# one tall call is fastest (measured on the 2-core target, numpy's OpenBLAS, one thread)
NARROW_OUTPUTS = 16
NARROW_ROWS = 64


def _blocks(macs, n):
    """Threads for a product of ``macs`` multiply-adds whose split axis has length n."""
    if macs < PARALLEL_MIN_MACS:
        return 1
    return max(1, min(numba.get_num_threads(), n // _MIN_PER_BLOCK))


@njit(cache=True)
def _forward_block(x, w, b, has_bias, out, t, blocks, vectors_at):
    """Block t of blocks: output features [o0, o1) for every row, or for a narrow head
    (NARROW_OUTPUTS or fewer features) rows [r0, r1) (in NARROW_ROWS-row pieces for
    OpenBLAS). vectors_at: vector_linear's forward kernel's address (b zeros without bias),
    or 0 for OpenBLAS."""
    N, O = out.shape
    narrow = O <= NARROW_OUTPUTS
    if narrow:
        r0, r1, o0, o1 = t * N // blocks, (t + 1) * N // blocks, 0, O
    else:
        r0, r1, o0, o1 = 0, N, t * O // blocks, (t + 1) * O // blocks
    if vectors_at != 0:
        vector_linear.call(vectors_at, (x, w, b, out, r0, r1, o0, o1, 0))
        return
    if has_bias:
        for i in range(r0, r1):  # element loops: a slice assignment compiles seconds slower
            for j in range(o0, o1):
                out[i, j] = b[j]
    # out = x·wᵀ + out (beta 1 adds the bias, as torch's addmm does)
    beta = 1.0 if has_bias else 0.0
    if not narrow:
        gemm(x, w[o0:o1], out[:, o0:o1], False, True, 1.0, beta)
        return
    for c0 in range(r0, r1, NARROW_ROWS):
        c1 = min(c0 + NARROW_ROWS, r1)
        gemm(x[c0:c1], w, out[c0:c1], False, True, 1.0, beta)


@per_thread.by_address
def _forward_thread(t, args):
    """Thread t's block of the forward pass (per_thread.run's worker)."""
    x, w, b, has_bias, out, blocks, vectors_at = args
    _forward_block(x, w, b, has_bias, out, t, blocks, vectors_at)


@njit(cache=True)
def _backward_block(dout, x, w, dx, dw, db, t, blocks, has_bias, input_grad, vectors_at):
    """Block t of blocks: dW and db for features [o0, o1), dx for rows [r0, r1).
    vectors_at: vector_linear's accumulate_rows' address (dw and dx zeroed), or 0 for
    OpenBLAS."""
    N, O = dout.shape
    o0, o1 = t * O // blocks, (t + 1) * O // blocks
    r0, r1 = t * N // blocks, (t + 1) * N // blocks
    dflat = dout.reshape(dout.size)
    if vectors_at != 0:  # dW = doutᵀ·x: scalars dout[n, o] at o + n·O
        vector_linear.call(vectors_at, (dflat, 1, O, x, dw, o0, o1))
    else:
        gemm(dout[:, o0:o1], x, dw[o0:o1], True, False, 1.0, 0.0)
    if has_bias:
        for j in range(o0, o1):
            s = 0.0  # float64, as the conv kernels sum their bias gradients
            for i in range(N):
                s += dout[i, j]
            db[j] = s
    if input_grad and vectors_at != 0:  # dx = dout·w: scalars dout[n, o] at n·O + o
        vector_linear.call(vectors_at, (dflat, O, 1, w, dx, r0, r1))
    elif input_grad:
        gemm(dout[r0:r1], w, dx[r0:r1], False, False, 1.0, 0.0)


@per_thread.by_address
def _backward_thread(t, args):
    """Thread t's block of the backward pass (per_thread.run's worker)."""
    dout, x, w, dx, dw, db, has_bias, input_grad, blocks, vectors_at = args
    _backward_block(dout, x, w, dx, dw, db, t, blocks, has_bias, input_grad, vectors_at)


def linear_forward(x, w, b):
    """x: (N, in), w: (out, in), b: (out,) or None. Returns out (N, out) and a cache."""
    x = np.ascontiguousarray(x)
    w = np.ascontiguousarray(w)
    N = x.shape[0]
    has_bias = b is not None
    bias = np.ascontiguousarray(b) if has_bias else np.zeros(w.shape[0], dtype=x.dtype)
    if sparse_linear.applies(x, w, bias):
        out = sparse_linear.forward(x, w, bias)
        if out is not None:  # None: w holds an inf or NaN, which 0·w must turn into NaN
            return out, (x, w, b)
    # zeros, not empty: blas.gemm's pure-Python fallback (NUMBA_DISABLE_JIT=1) reads c even
    # when beta is 0, and 0·NaN garbage would be NaN
    out = np.zeros((N, w.shape[0]), dtype=x.dtype)
    O = w.shape[0]
    blocks = _blocks(x.size * O, N if O <= NARROW_OUTPUTS else O)
    vectors_at = (vector_linear.forward_address(x.dtype)
                  if x.dtype == w.dtype and vector_linear.applies(x.shape[1], x.dtype) else 0)
    if blocks == 1:
        _forward_block(x, w, bias, has_bias, out, 0, 1, vectors_at)
    else:
        per_thread.run(_forward_thread, blocks, (x, w, bias, has_bias, out, blocks, vectors_at))
    return out, (x, w, b)


def linear_backward(dout, cache, input_grad=True):
    """dout: (N, out). Returns dx (N, in), dw (out, in), db (out,) or None when b is None.

    input_grad False: dx is not computed and returned as None (half the work of a first layer).
    """
    x, w, b = cache
    dout = np.ascontiguousarray(dout)
    N = x.shape[0]
    blocks = _blocks((2 if input_grad else 1) * x.size * w.shape[0], max(N, w.shape[0]))
    # zeros: see linear_forward; a (N, 0) stand-in the kernels never touch without input_grad
    dx = np.zeros(x.shape if input_grad else (N, 0), dtype=dout.dtype)
    dw = np.zeros(w.shape, dtype=dout.dtype)
    db = np.zeros(w.shape[0], dtype=dout.dtype)
    has_bias = b is not None
    vectors_at = (vector_linear.accumulate_address(x.dtype)
                  if dout.dtype == x.dtype == w.dtype
                  and vector_linear.applies(x.shape[1], x.dtype) else 0)
    if blocks == 1:
        _backward_block(dout, x, w, dx, dw, db, 0, 1, has_bias, input_grad, vectors_at)
    else:
        per_thread.run(_backward_thread, blocks,
                       (dout, x, w, dx, dw, db, has_bias, input_grad, blocks, vectors_at))
    return (dx if input_grad else None), dw, (db if has_bias else None)
