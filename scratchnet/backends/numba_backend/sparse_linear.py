"""Linear forward pass that skips the input's exact zeros, for inputs that are mostly zeros.

Which calls (``applies``): at least ``MIN_ROWS`` rows, at least one block (``block_outputs``:
64 float32 or 32 float64 outputs), and at most ``MAX_DENSITY`` of the input nonzero, judged on
``DENSITY_ROWS`` rows spread over the batch. In the models: the first layer of ``mlp128`` on
its tutorial's input, pixels scaled to [0, 1], where 81 % of MNIST's pixels are exactly 0
(background), at inference and evaluation batch sizes. Training batches (32-64 rows) stay on
the GEMM: per call this path transposes the weights, and below ``MIN_ROWS`` that costs more
than the skipped work saves. Normalised inputs (no zeros) and most hidden activations (about
half zeros after a ReLU) stay on the GEMM too.

Why: that layer is one (1000, 784)·(784, 128) product at batch 1000, which torch runs at up to
95 % of the machine's measured GEMM peak (README), so no dense kernel can be much faster; but 81 %
of its multiply-adds are by zero. Per sample on one core of the 2-core target (AMD Zen 4),
measured: the GEMM 2.2 µs, this path 0.9-1.3 µs (0.08 µs of it to list the nonzeros; the rest
is the multiply-adds, whose weight rows come from L2: with every row in L1 they took 0.5 µs).
The whole layer on two threads: 0.53-0.75 ms against torch's 1.0-1.2 ms in the same process.
Tried and not kept: blocking the rows into groups that share L1-sized chunks of wᵀ (no faster:
the per-chunk reloads of the accumulators cost what L1 saved), software prefetch of the next
rows (no change), huge pages for wᵀ (within noise).

How: ``wt = wᵀ`` (in, out), so each input feature's weights are one contiguous row. For each
sample, ``_nonzeros`` lists the positions of its nonzero inputs, ``lanes`` values at a time
(one vector compare, its bit mask picks a row of ``_POSITIONS``, a precomputed table of where
the set bits are, and a vector store writes them; the count of set bits moves the end of the
list on). Then, for each block of ``ACCUMULATORS`` × ``lanes`` outputs, the accumulators live in
vector registers while ``_axpy`` adds ``x[n, k] · wt[k, block]`` for each listed k in
ascending order, and ``_flush`` writes them out plus the bias. A block that does not divide
the outputs ends at the last output (overlapping the one before, which recomputes the same
values with the same arithmetic). Threads split the rows; the transposition runs first as its
own launch, split over the input features.

Numbers: each output is ``Σ_k x[n, k]·w[o, k]`` over the nonzero k, ascending, fused
multiply-adds (``llvm.fmuladd``), plus the bias, as torch's ``addmm`` adds it after the sum.
A skipped term is ``±0·w``, which leaves a sum unchanged (the sums start at +0 and never become
-0) only while w is finite: ``0·inf`` is NaN. So the transposition also checks that every
weight is finite, and ``forward`` returns None otherwise (the caller then runs the GEMM, whose
NaNs are torch's). An input NaN or inf is nonzero and taken. The numbers are within float
rounding of the GEMM's, not bitwise; the parity tests hold them to torch's tolerances.
Under ``NUMBA_DISABLE_JIT`` (no intrinsics) ``applies`` is False.
"""
import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import per_thread, precompile
from .simd import (VECTOR_BYTES, fmuladd, lanes, splat, vector_pointer, vector_type,
                   zeroed_block)

__all__ = ["applies", "block_outputs", "density", "forward"]

ACCUMULATORS = 8  # vectors of outputs per block: 8 accumulators + 1 broadcast of 16 ymm
# measured on the 2-core target (AMD Zen 4), one layer of 784 or 1,600 inputs and 128 outputs,
# this path's time against the GEMM's at densities 0.1-0.5: at 1,000 rows it won up to 0.3-0.35
# of the inputs nonzero (placed at random; MNIST's clustered strokes win more: 2x at 0.19), at
# 256 rows up to ~0.25, at 128 up to ~0.2; at 32-64 rows it lost from 0.2 on
MIN_ROWS = 256
MAX_DENSITY = 0.25
DENSITY_ROWS = 16
# the fewest rows a thread's share may have
_MIN_ROWS_PER_THREAD = 32


def block_outputs(dtype):
    """Outputs per block: 64 float32, 32 float64."""
    return ACCUMULATORS * lanes(dtype)


@njit(cache=True)
def _count_nonzero_rows(x, step):
    """(nonzero values, values) in rows 0, step, 2·step, ... of x (N, in); NaN is nonzero."""
    N, K = x.shape
    count = 0
    rows = 0
    for n in range(0, N, step):
        rows += 1
        for k in range(K):
            count += x[n, k] != 0
    return count, rows * K


def density(x):
    """Fraction of nonzero values (NaN counts as nonzero) in about ``DENSITY_ROWS`` rows of
    x (N, in) spread over the batch: an estimate that costs ~2 µs at MNIST's width (numpy's
    count_nonzero on the same strided rows took 23 µs)."""
    step = max(1, x.shape[0] // DENSITY_ROWS)
    counted = _count_nonzero_rows(x, step)
    if precompile.walking:  # precompile.py's helper notes the kernel above and runs none
        counted = _count_nonzero_rows.py_func(x, step)
    count, size = counted
    return count / max(size, 1)


def applies(x, w, b):
    """True when ``forward`` should compute x (N, in)·wᵀ + b for w (out, in), b (out,)
    (module docstring)."""
    return (not numba.config.DISABLE_JIT and x.dtype in (np.float32, np.float64)
            and w.dtype == b.dtype == x.dtype and x.ndim == 2
            and x.shape[0] >= MIN_ROWS and x.shape[1] > 0
            and w.shape[0] >= block_outputs(x.dtype) and density(x) <= MAX_DENSITY)


def _positions_table(V):
    """(2^V · V,) int32: row ``mask`` lists the set bits of mask in ascending order, then zeros."""
    table = np.zeros((1 << V, V), dtype=np.int32)
    for mask in range(1 << V):
        bits = [j for j in range(V) if mask >> j & 1]
        table[mask, :len(bits)] = bits
    return table.reshape(-1)


_POSITIONS = {V: _positions_table(V) for V in {lanes(np.float32), lanes(np.float64)}}


def _accumulators_type(vector):
    return ir.ArrayType(vector, ACCUMULATORS)


@intrinsic
def _new_accumulators(typingctx, like):
    """ACCUMULATORS zeroed vectors of the 1-D array ``like``'s dtype on the caller's stack (an
    opaque pointer for ``_axpy`` and ``_flush``; LLVM keeps them in registers)."""
    def codegen(context, builder, signature, args):
        return zeroed_block(context, builder, like, ACCUMULATORS)

    return types.voidptr(like), codegen


@intrinsic
def _axpy(typingctx, block, v, wf, at):
    """accumulator j += v · wf[at + j·V : at + (j+1)·V] for j < ACCUMULATORS."""
    def codegen(context, builder, signature, args):
        block_ptr, value, w_array, at_v = args
        vector = vector_type(context, wf)
        block_ptr = builder.bitcast(block_ptr, _accumulators_type(vector).as_pointer())
        multiply_add = fmuladd(builder, vector)
        scale = splat(builder, vector, value)
        align = VECTOR_BYTES // vector.count  # an element's: the loads are unaligned
        for j in range(ACCUMULATORS):
            offset = builder.add(at_v, ir.Constant(at_v.type, j * vector.count))
            weights = builder.load(vector_pointer(context, builder, wf, w_array, offset, vector),
                                   align=align)
            acc = cgutils.gep_inbounds(builder, block_ptr, 0, j)
            builder.store(builder.call(multiply_add, [scale, weights, builder.load(acc)]), acc)
        return context.get_dummy_value()

    return types.void(block, v, wf, at), codegen


@intrinsic
def _flush(typingctx, block, b, b_at, of, at):
    """of[at + j·V : ...] = accumulator j + b[b_at + j·V : ...], then zero the accumulators."""
    def codegen(context, builder, signature, args):
        block_ptr, b_array, b_at_v, out_array, at_v = args
        vector = vector_type(context, of)
        block_ptr = builder.bitcast(block_ptr, _accumulators_type(vector).as_pointer())
        align = VECTOR_BYTES // vector.count
        for j in range(ACCUMULATORS):
            step = ir.Constant(at_v.type, j * vector.count)
            bias = builder.load(vector_pointer(context, builder, b, b_array,
                                               builder.add(b_at_v, step), vector), align=align)
            acc = cgutils.gep_inbounds(builder, block_ptr, 0, j)
            out = vector_pointer(context, builder, of, out_array, builder.add(at_v, step), vector)
            builder.store(builder.fadd(builder.load(acc), bias), out, align=align)
            builder.store(ir.Constant(vector, None), acc)
        return context.get_dummy_value()

    return types.void(block, b, b_at, of, at), codegen


@intrinsic
def _list_nonzeros(typingctx, xf, x_at, positions, index, m, k):
    """index[m : m + V] = k + (positions of the nonzeros, NaN included, among the V values
    xf[x_at : x_at + V]), followed by leftovers that later stores overwrite; returns m plus
    their count."""
    def codegen(context, builder, signature, args):
        x_array, x_at_v, table, index_array, m_v, k_v = args
        vector = vector_type(context, xf)
        V = vector.count
        i32, i64 = ir.IntType(32), ir.IntType(64)
        values = builder.load(vector_pointer(context, builder, xf, x_array, x_at_v, vector),
                              align=VECTOR_BYTES // V)
        nonzero = builder.fcmp_unordered("!=", values, ir.Constant(vector, None))
        mask = builder.zext(builder.bitcast(nonzero, ir.IntType(V)), i32)
        row = builder.mul(builder.zext(mask, i64), ir.Constant(i64, V))
        positions_vector = ir.VectorType(i32, V)
        found = builder.load(vector_pointer(context, builder, positions, table, row,
                                            positions_vector), align=4)
        found = builder.add(found, splat(builder, positions_vector, builder.trunc(k_v, i32)))
        builder.store(found, vector_pointer(context, builder, index, index_array, m_v,
                                            positions_vector), align=4)
        popcount = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(i32, [i32]), "llvm.ctpop.i32")
        return builder.add(m_v, builder.zext(builder.call(popcount, [mask]), i64))

    return types.int64(xf, x_at, positions, index, m, k), codegen


@njit(cache=True)
def _nonzeros(xf, at, K, positions, index):
    """index[:m] = positions k < K with xf[at + k] != 0 (NaN included), ascending; returns m.
    index holds K + lanes entries (the vector stores write past m)."""
    V = VECTOR_BYTES // xf.itemsize
    m = 0
    k = 0
    while k + V <= K:
        m = _list_nonzeros(xf, at + k, positions, index, m, k)
        k += V
    while k < K:
        index[m] = k
        m += xf[at + k] != 0
        k += 1
    return m


@njit(cache=True)
def _forward_rows(x, wt, b, out, index, positions, r0, r1):
    """out[r0:r1] = x[r0:r1]·wt + b over each row's nonzero inputs (module docstring)."""
    N, K = x.shape
    O = wt.shape[1]
    xf = x.reshape(N * K)
    wf = wt.reshape(K * O)
    of = out.reshape(N * O)
    B = ACCUMULATORS * (VECTOR_BYTES // xf.itemsize)
    block = _new_accumulators(wf)
    for n in range(r0, r1):
        m = _nonzeros(xf, n * K, K, positions, index)
        for o_start in range(0, O, B):
            o0 = min(o_start, O - B)
            for j in range(m):
                k = np.int64(index[j])
                _axpy(block, xf[n * K + k], wf, k * O + o0)
            _flush(block, b, o0, of, n * O + o0)


@per_thread.by_address
def _forward_thread(t, args):
    """Thread t's rows of the product (per_thread.run's worker)."""
    x, wt, b, out, index, positions, T = args
    N = x.shape[0]
    _forward_rows(x, wt, b, out, index[t], positions, t * N // T, (t + 1) * N // T)


@intrinsic
def _transpose_tile(typingctx, wf, w_at, w_stride, wtf, wt_at, wt_stride):
    """wtf[wt_at + j·wt_stride + i] = wf[w_at + i·w_stride + j] for i, j < V (a V×V tile,
    V values of each of V rows loaded as vectors, their transposes stored as vectors);
    returns True when all V·V values are finite."""
    def codegen(context, builder, signature, args):
        w_array, w_at_v, w_stride_v, wt_array, wt_at_v, wt_stride_v = args
        vector = vector_type(context, wf)
        V = vector.count
        align = VECTOR_BYTES // V
        i32 = ir.IntType(32)
        rows = []
        for i in range(V):
            at = builder.add(w_at_v, builder.mul(w_stride_v, ir.Constant(w_stride_v.type, i)))
            rows.append(builder.load(vector_pointer(context, builder, wf, w_array, at, vector),
                                     align=align))
        nonfinite = ir.Constant(ir.VectorType(ir.IntType(1), V), None)
        for row in rows:  # v - v is 0 for a finite v and NaN for inf or NaN
            difference = builder.fsub(row, row)
            nonfinite = builder.or_(nonfinite, builder.fcmp_unordered(
                "!=", difference, ir.Constant(vector, None)))
        for j in range(V):
            column = ir.Constant(vector, ir.Undefined)
            for i, row in enumerate(rows):
                value = builder.extract_element(row, ir.Constant(i32, j))
                column = builder.insert_element(column, value, ir.Constant(i32, i))
            at = builder.add(wt_at_v, builder.mul(wt_stride_v, ir.Constant(wt_stride_v.type, j)))
            builder.store(column, vector_pointer(context, builder, wtf, wt_array, at, vector),
                          align=align)
        any_bad = builder.bitcast(nonfinite, ir.IntType(V))
        return builder.icmp_unsigned("==", any_bad, ir.Constant(ir.IntType(V), 0))

    return types.boolean(wf, w_at, w_stride, wtf, wt_at, wt_stride), codegen


@njit(cache=True)
def _transpose_columns(w, wt, k0, k1):
    """wt[k0:k1] = w[:, k0:k1]ᵀ for w (O, K), wt (K, O); returns True when every value copied
    is finite. V×V tiles as vectors (``_transpose_tile``), the edges one value at a time."""
    O, K = w.shape
    wf = w.reshape(O * K)
    wtf = wt.reshape(K * O)
    V = VECTOR_BYTES // wf.itemsize
    tiled_rows = O - O % V
    finite = True
    k = k0
    while k + V <= k1:
        for o in range(0, tiled_rows, V):
            finite &= _transpose_tile(wf, o * K + k, K, wtf, k * O + o, O)
        k += V
    for o in range(O):  # the columns right of the tiles, and the rows below them
        for j in range(k if o < tiled_rows else k0, k1):
            v = w[o, j]
            wt[j, o] = v
            finite &= v - v == 0  # inf - inf and NaN - NaN are NaN
    return finite


@per_thread.by_address
def _transpose_thread(t, args):
    """Thread t's input features of wᵀ (per_thread.run's worker)."""
    w, wt, finite, T = args
    K = w.shape[1]
    finite[t] = _transpose_columns(w, wt, t * K // T, (t + 1) * K // T)


def forward(x, w, b):
    """x (N, in)·wᵀ + b for x (N, in), w (out, in), b (out,), all C-contiguous, one float dtype,
    where ``applies`` holds. Returns out (N, out), or None when w holds an inf or NaN."""
    N, K = x.shape
    O = w.shape[0]
    T = max(1, min(numba.get_num_threads(), N // _MIN_ROWS_PER_THREAD))
    wt = np.empty((K, O), dtype=w.dtype)
    finite = np.ones(T, dtype=np.bool_)
    per_thread.run(_transpose_thread, T, (w, wt, finite, T))
    if not finite.all():
        return None
    out = np.empty((N, O), dtype=x.dtype)
    index = np.empty((T, K + lanes(x.dtype)), dtype=np.int32)
    positions = _POSITIONS[lanes(x.dtype)]
    per_thread.run(_forward_thread, T, (x, wt, b, out, index, positions, T))
    return out
