"""Fully connected layer (numpy twin: numpy_backend/linear.py): products split across threads.

    out = x·wᵀ + b        dx = dout·w        dw = doutᵀ·x        db = Σ_n dout[n]

Each thread computes its own block, so nothing is summed afterwards: output features for the
forward pass (rows for a classifier head of NARROW_OUTPUTS or fewer features), output features
for dw and db, rows for dx. A block runs simd/linear.py's register-block kernels where
``simd.linear.applies`` (the forward pass decides, the cache carries the choice to the
backward pass), else single-threaded BLAS (``np.dot``, see common.py). A forward pass over an
input that is mostly exact zeros, at inference batch sizes, skips them instead
(``simd.sparse_linear.applies``). fused.linear_relu_forward's ReLU runs in the same kernel, on
the block just computed.
"""
import numpy as np
from numba import njit, prange

from .activation import relu_forward
from .common import chunks_for, run_split
from .simd import linear as simd_linear
from .simd import sparse_linear

__all__ = ["linear_forward", "linear_backward"]

# a forward pass with this many output features or fewer splits rows across threads: split by
# features, each thread would get a sliver of a classifier head
NARROW_OUTPUTS = 16
# BLAS runs a tall product with few output columns faster in pieces of this many rows, each
# piece of x staying in cache while the kernel sweeps it
NARROW_ROWS = 64
# the fewest output features (or rows) a thread's block gets
MIN_PER_BLOCK = 16
_FLOATS = (np.float32, np.float64)


def _blocks(macs, items):
    """Threads for a product of ``macs`` multiply-adds split along an axis of ``items``.

    A multiply-add counts as half an element operation of common.PARALLEL_MIN_WORK: it costs
    less than an elementwise pass's memory traffic per element, so a launch of the pool pays
    for itself only past twice as many (mlp's layers at batch 32 stay on the calling thread).
    """
    return chunks_for(max(1, items // MIN_PER_BLOCK), macs // 2)


@njit(cache=True)
def _forward_block(x, w, b, has_bias, relu, out, vector, t, blocks):
    """Block t of blocks of out = x·wᵀ + b, then max(out, 0) where relu: features [o0, o1) of
    every row, or rows [r0, r1) of a narrow head. vector: simd_linear.forward_rows (b zeros
    without bias), else BLAS."""
    N, O = out.shape
    if O <= NARROW_OUTPUTS:
        r0, r1, o0, o1 = t * N // blocks, (t + 1) * N // blocks, 0, O
    else:
        r0, r1, o0, o1 = 0, N, t * O // blocks, (t + 1) * O // blocks
    if vector:
        simd_linear.forward_rows(x, w, b, out, r0, r1, o0, o1, False)
    else:
        _blas_block(x, w, b, has_bias, out, r0, r1, o0, o1, blocks)
    if relu:
        for i in range(r0, r1):
            for j in range(o0, o1):
                # `< 0`, so NaN passes through as torch's clamp_min does
                if out[i, j] < 0:
                    out[i, j] = 0


@njit(cache=True)
def _blas_block(x, w, b, has_bias, out, r0, r1, o0, o1, blocks):
    """out[r0:r1, o0:o1] = x·wᵀ + b through single-threaded BLAS (``np.dot``)."""
    N, O = out.shape
    if O <= NARROW_OUTPUTS:
        for c0 in range(r0, r1, NARROW_ROWS):
            c1 = min(c0 + NARROW_ROWS, r1)
            np.dot(x[c0:c1], w.T, out[c0:c1])
    elif blocks == 1:
        np.dot(x, w.T, out)
    else:
        part = np.dot(x, w[o0:o1].T)
        # an element loop: a slice assignment compiles Numba's shape-error formatting
        for i in range(N):
            for j in range(o1 - o0):
                out[i, o0 + j] = part[i, j]
    if has_bias:
        for i in range(r0, r1):
            for j in range(o0, o1):
                out[i, j] += b[j]


@njit(cache=True, parallel=True)
def _forward_parallel(x, w, b, has_bias, relu, out, vector, blocks):
    for t in prange(blocks):
        _forward_block(x, w, b, has_bias, relu, out, vector, np.int64(t), blocks)


@njit(cache=True)
def _backward_blocks(dout, x, w, input_grad, dx, dw, db, dout_t, vector, t0, t1, blocks):
    """Blocks t0 .. t1 - 1 of blocks (all of them in one call for a serial run): block t has
    dw and db for features [o0, o1), dx for rows [r0, r1).

    dout_t (O, N): scratch for doutᵀ, whose rows [o0, o1) a block fills for its GEMM.
    vector: simd_linear.accumulate_rows's products instead of BLAS (dout_t unused).
    """
    N, O = dout.shape
    for t in range(t0, t1):
        o0, o1 = t * O // blocks, (t + 1) * O // blocks
        r0, r1 = t * N // blocks, (t + 1) * N // blocks
        for j in range(o0, o1):
            s = 0.0  # float64, as the conv kernels sum their bias gradients
            for i in range(N):
                s += dout[i, j]
            db[j] = s
        if vector:
            simd_linear.accumulate_rows(dout, 1, O, x, dw, o0, o1)
            if input_grad:
                simd_linear.accumulate_rows(dout, O, 1, w, dx, r0, r1)
            continue
        for j in range(o0, o1):
            for i in range(N):
                dout_t[j, i] = dout[i, j]
        np.dot(dout_t[o0:o1], x, dw[o0:o1])
        if input_grad:
            np.dot(dout[r0:r1], w, dx[r0:r1])


@njit(cache=True, parallel=True)
def _backward_parallel(dout, x, w, input_grad, dx, dw, db, dout_t, vector, blocks):
    for t in prange(blocks):
        _backward_blocks(dout, x, w, input_grad, dx, dw, db, dout_t, vector, np.int64(t),
                         np.int64(t) + 1, blocks)


@njit(cache=True, parallel=True)
def _skip_zeros_parallel(x, wt, b, out, index, positions, blocks):
    N = x.shape[0]
    for t in prange(blocks):
        k = np.int64(t)
        sparse_linear.forward_rows(x, wt, b, out, index[k], positions, k * N // blocks,
                                   (k + 1) * N // blocks)


@njit(cache=True, parallel=True)
def _transpose_finite_parallel(w, wt, finite, blocks):
    K = w.shape[1]
    for t in prange(blocks):
        finite[t] = sparse_linear.transpose_finite(w, wt, t * K // blocks, (t + 1) * K // blocks)


def _skip_zeros_forward(x, w, bias):
    """x·wᵀ + bias over x's nonzero inputs (simd/sparse_linear.py), rows split across threads,
    or None when w holds an inf or NaN (whose products with x's zeros the GEMM must make).
    The threads first share the transpose of w, by input features."""
    (N, K), O = x.shape, w.shape[0]
    wt = np.empty((K, O), dtype=w.dtype)
    blocks = chunks_for(N // sparse_linear.SKIP_MIN_ROWS_PER_THREAD, x.size * O)
    finite = np.ones(blocks, dtype=np.bool_)

    def transpose(t):
        finite[t] = sparse_linear.transpose_finite(w, wt, t * K // blocks, (t + 1) * K // blocks)

    run_split(_transpose_finite_parallel, transpose, blocks, w, wt, finite)
    if not finite.all():
        return None
    out = np.empty((N, O), dtype=x.dtype)
    index, positions = sparse_linear.scratch(x, blocks)

    def chunk(t):
        sparse_linear.forward_rows(x, wt, bias, out, index[t], positions, t * N // blocks,
                                   (t + 1) * N // blocks)

    run_split(_skip_zeros_parallel, chunk, blocks, x, wt, bias, out, index, positions)
    return out


def _usable(a, b):
    """BLAS through np.dot, and the vector kernels, want non-empty float arrays of one dtype."""
    return a.dtype == b.dtype and a.dtype.type in _FLOATS and a.size > 0 and b.size > 0


def linear_forward(x, w, b, relu=False):
    """x: (N, in), w: (out, in), b: (out,) or None. Returns out (N, out) and a cache.

    relu: max(out, 0) in the same kernel, for fused.linear_relu_forward.
    """
    x = np.ascontiguousarray(x)
    w = np.ascontiguousarray(w)
    if not _usable(x, w):
        out = x @ w.T
        if b is not None:
            out += b
        return _relu_if(out, relu), (x, w, b, False)
    N, O = x.shape[0], w.shape[0]
    has_bias = b is not None
    bias = np.ascontiguousarray(b, dtype=x.dtype) if has_bias else np.zeros(O, x.dtype)
    # the gradients' kernels take the same layers: backward reads this choice from the cache
    vector = simd_linear.applies(x, w)
    if sparse_linear.applies(x, w):
        out = _skip_zeros_forward(x, w, bias)
        if out is not None:
            return _relu_if(out, relu), (x, w, b, vector)
    out = np.empty((N, O), dtype=x.dtype)
    blocks = _blocks(x.size * O, N if O <= NARROW_OUTPUTS else O)
    run_split(_forward_parallel,
              lambda t: _forward_block(x, w, bias, has_bias, relu, out, vector, t, blocks),
              blocks, x, w, bias, has_bias, relu, out, vector)
    return out, (x, w, b, vector)


def _relu_if(out, relu):
    """relu_forward(out)'s output where relu, else out: the ReLU of the paths without it."""
    return relu_forward(out)[0] if relu else out


def linear_backward(dout, cache, input_grad=True):
    """dout: (N, out). Returns dx (N, in), dw (out, in), db (out,) or None when b is None.

    input_grad False: dx is not computed and returned as None (half the work of a first layer).
    """
    x, w, b, vector = cache
    dout = np.ascontiguousarray(dout)
    if not (_usable(x, w) and dout.dtype == x.dtype and dout.size > 0):
        dx = dout @ w if input_grad else None
        return dx, dout.T @ x, (dout.sum(axis=0) if b is not None else None)
    N, O = dout.shape
    dx = np.empty(x.shape if input_grad else (0, 0), dtype=dout.dtype)
    dw = np.empty(w.shape, dtype=dout.dtype)
    db = np.empty(O, dtype=dout.dtype)
    dout_t = np.empty((0, 0) if vector else (O, N), dtype=dout.dtype)
    macs, items = x.size * O, max(N, O)
    work = (2 if input_grad else 1) * macs
    # BLAS rounds an entry by the shape of its product, so through BLAS dw comes in the blocks
    # sized for dw and dx, with or without dx (on the calling thread when dw alone is small);
    # the vector kernels round an entry alike in any block
    blocks = _blocks(work if vector else 2 * macs, items)

    def chunk(t):
        _backward_blocks(dout, x, w, input_grad, dx, dw, db, dout_t, vector, t, t + 1, blocks)

    if blocks == 1 or not (input_grad or vector) and _blocks(work, items) == 1:
        _backward_blocks(dout, x, w, input_grad, dx, dw, db, dout_t, vector, 0, blocks, blocks)
    else:
        run_split(_backward_parallel, chunk, blocks, dout, x, w, input_grad, dx, dw, db, dout_t,
                  vector)
    return (dx if input_grad else None), dw, (db if b is not None else None)
