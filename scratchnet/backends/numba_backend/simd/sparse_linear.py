"""A linear layer's forward pass that skips the input's exact zeros (numpy twin:
numpy_backend/linear.py), for inputs that are mostly zeros such as MNIST's background pixels.

    out[n, o] = Σ_{k : x[n, k] != 0} x[n, k]·w[o, k] + b[o]        (k ascending)

Which calls (``applies``): at least SKIP_MIN_ROWS rows (inference and evaluation batches), a
block of outputs (``skip_block``) and at most SKIP_MAX_DENSITY of x nonzero, estimated on
SKIP_DENSITY_ROWS rows spread over the batch.

How: ``wt = wᵀ`` (in, out), so each input feature's weights are one contiguous row; the threads
share the transpose, by input features, in vector tiles (``_transpose_tile``). For each row of
x, ``_nonzeros`` lists the positions of its nonzero inputs a 256-bit vector at a time (a
vector compare's bit mask picks a row of a table of where the set bits are); then, for each
block of SKIP_ACCUMULATORS vectors of outputs, kept in registers, ``_axpy`` adds
x[n, k]·wt[k, block] for each listed k, ascending, and ``_flush`` writes them out plus the
bias. The accumulators are 512 bits wide on a CPU with AVX-512 (a block of 128 float32
outputs: a layer of 128 outputs lists each row's nonzeros once), else 256.

A skipped term is ±0·w, which leaves a sum unchanged only while w is finite (0·inf is NaN), so
``transpose_finite`` checks every weight and the caller runs the GEMM otherwise. An input NaN
or inf is nonzero and taken. Numbers are within float rounding of the GEMM's, not bitwise.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from . import enabled
from .vectors import (VECTOR_BYTES, WIDE_VECTOR_BYTES, block_vectors, element_and_vector, fmuladd,
                      has_wide_vectors, new_block_intrinsic, slot, splat, vector_pointer)

__all__ = ["applies", "skip_block", "transpose_finite", "forward_rows", "scratch"]

# 8 accumulators and 1 broadcast: 9 of AVX2's 16 registers, or of AVX-512's 32
SKIP_ACCUMULATORS = 8
ACCUMULATOR_BYTES = WIDE_VECTOR_BYTES if has_wide_vectors() else VECTOR_BYTES
SKIP_MIN_ROWS = 256  # below, transposing w per call costs more than the skipped work saves
SKIP_MAX_DENSITY = 0.25  # the most nonzero inputs for which skipping the rest pays
SKIP_DENSITY_ROWS = 16  # rows sampled across the batch to estimate the density
SKIP_MIN_ROWS_PER_THREAD = 32


def _list_lanes(dtype):
    """Values per 256-bit vector of the nonzero listing (its table has 2^lanes rows)."""
    return VECTOR_BYTES // np.dtype(dtype).itemsize


def skip_block(dtype):
    """Outputs per block of the zero-skipping product: with AVX-512 128 float32 or 64 float64,
    else 64 or 32."""
    return SKIP_ACCUMULATORS * ACCUMULATOR_BYTES // np.dtype(dtype).itemsize


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


def applies(x, w):
    """True when the forward pass of x (N, in) by w (out, in) should skip x's zeros: enough
    rows, a block of outputs, and at most SKIP_MAX_DENSITY of x nonzero (estimated on
    SKIP_DENSITY_ROWS rows). x and w C-contiguous, of one float dtype (the caller checks)."""
    if x.shape[0] < SKIP_MIN_ROWS or w.shape[0] < skip_block(x.dtype) or not enabled():
        return False
    count, size = _count_nonzero_rows(x, max(1, x.shape[0] // SKIP_DENSITY_ROWS))
    return count <= SKIP_MAX_DENSITY * size


def _positions_table(V):
    """(2^V · V,) int32: row ``mask`` lists the set bits of mask in ascending order, then zeros."""
    table = np.zeros((1 << V, V), dtype=np.int32)
    for mask in range(1 << V):
        bits = [j for j in range(V) if mask >> j & 1]
        table[mask, :len(bits)] = bits
    return table.reshape(-1)


_POSITIONS = {np.dtype(t): _positions_table(_list_lanes(t)) for t in (np.float32, np.float64)}


# SKIP_ACCUMULATORS zeroed vectors of ACCUMULATOR_BYTES
_new_skip_block = new_block_intrinsic(ACCUMULATOR_BYTES, SKIP_ACCUMULATORS)


@intrinsic
def _axpy(typingctx, block, like, value, w_address, w_at):
    """acc[j] += value · w[w_at + j·V : ... + V] for j < SKIP_ACCUMULATORS."""
    def codegen(context, builder, signature, args):
        block_ptr, _, value_v, w_addr, w_at_v = args
        element, vector = element_and_vector(context, like, ACCUMULATOR_BYTES)
        acc = block_vectors(builder, block_ptr, vector, SKIP_ACCUMULATORS)
        fma = fmuladd(builder, vector)
        scale = splat(builder, vector, value_v)
        align = ACCUMULATOR_BYTES // vector.count
        for j in range(SKIP_ACCUMULATORS):
            at = builder.add(w_at_v, ir.Constant(w_at_v.type, j * vector.count))
            weights = builder.load(vector_pointer(builder, w_addr, element, at, vector),
                                   align=align)
            a = slot(builder, acc, j)
            builder.store(builder.call(fma, [scale, weights, builder.load(a)]), a)
        return context.get_dummy_value()

    return types.void(block, like, value, w_address, w_at), codegen


@intrinsic
def _flush(typingctx, block, like, b_address, b_at, out_address, out_at):
    """out[out_at + j·V : ... + V] = acc[j] + b[b_at + j·V : ... + V], then zero the block."""
    def codegen(context, builder, signature, args):
        block_ptr, _, b_addr, b_at_v, out_addr, out_at_v = args
        element, vector = element_and_vector(context, like, ACCUMULATOR_BYTES)
        acc = block_vectors(builder, block_ptr, vector, SKIP_ACCUMULATORS)
        align = ACCUMULATOR_BYTES // vector.count
        for j in range(SKIP_ACCUMULATORS):
            step = ir.Constant(b_at_v.type, j * vector.count)
            bias = builder.load(vector_pointer(builder, b_addr, element,
                                               builder.add(b_at_v, step), vector), align=align)
            a = slot(builder, acc, j)
            out = vector_pointer(builder, out_addr, element, builder.add(out_at_v, step), vector)
            builder.store(builder.fadd(builder.load(a), bias), out, align=align)
            builder.store(ir.Constant(vector, None), a)
        return context.get_dummy_value()

    return types.void(block, like, b_address, b_at, out_address, out_at), codegen


@intrinsic
def _list_nonzeros(typingctx, like, x_address, x_at, positions_address, index_address, m, k):
    """index[m : m + V] = k + (positions of the nonzeros, NaN included, among the V values
    x[x_at : x_at + V]), followed by leftovers that later stores overwrite; returns m plus
    their count. positions: _positions_table(V); index: int32."""
    sig = types.int64(like, x_address, x_at, positions_address, index_address, m, k)

    def codegen(context, builder, signature, args):
        _, x_addr, x_at_v, table_addr, index_addr, m_v, k_v = args
        element, vector = element_and_vector(context, like, VECTOR_BYTES)
        V = vector.count
        i32, i64 = ir.IntType(32), ir.IntType(64)
        values = builder.load(vector_pointer(builder, x_addr, element, x_at_v, vector),
                              align=VECTOR_BYTES // V)
        nonzero = builder.fcmp_unordered("!=", values, ir.Constant(vector, None))
        mask = builder.zext(builder.bitcast(nonzero, ir.IntType(V)), i32)
        row = builder.mul(builder.zext(mask, i64), ir.Constant(i64, V))
        positions = ir.VectorType(i32, V)
        found = builder.load(vector_pointer(builder, table_addr, i32, row, positions), align=4)
        found = builder.add(found, splat(builder, positions, builder.trunc(k_v, i32)))
        builder.store(found, vector_pointer(builder, index_addr, i32, m_v, positions), align=4)
        popcount = builder.module.declare_intrinsic("llvm.ctpop", [i32])
        return builder.add(m_v, builder.zext(builder.call(popcount, [mask]), i64))

    return sig, codegen


@njit(cache=True)
def _nonzeros(x, at, K, positions, index):
    """index[:m] = positions k < K with x.flat[at + k] != 0 (NaN included), ascending;
    returns m. index holds K + lanes int32 entries (the vector stores write past m)."""
    V = VECTOR_BYTES // x.itemsize
    xf = x.reshape(x.size)
    xa, pa, ia = x.ctypes.data, positions.ctypes.data, index.ctypes.data
    m = 0
    k = 0
    while k + V <= K:
        m = _list_nonzeros(x, xa, at + k, pa, ia, m, k)
        k += V
    while k < K:
        index[m] = k
        m += xf[at + k] != 0
        k += 1
    return m


@intrinsic
def _transpose_tile(typingctx, like, w_address, w_at, w_stride, wt_address, wt_at, wt_stride):
    """wt[wt_at + j·wt_stride + i] = w[w_at + i·w_stride + j] for i, j < V: a V×V tile, its
    V rows loaded as vectors and its V columns stored as vectors; returns True when all V·V
    values are finite."""
    sig = types.boolean(like, w_address, w_at, w_stride, wt_address, wt_at, wt_stride)

    def codegen(context, builder, signature, args):
        _, w_addr, w_at_v, w_stride_v, wt_addr, wt_at_v, wt_stride_v = args
        element, vector = element_and_vector(context, like, VECTOR_BYTES)
        V = vector.count
        align = VECTOR_BYTES // V
        i32 = ir.IntType(32)
        index = w_at_v.type
        rows = []
        for i in range(V):
            at = builder.add(w_at_v, builder.mul(w_stride_v, ir.Constant(index, i)))
            rows.append(builder.load(vector_pointer(builder, w_addr, element, at, vector),
                                     align=align))
        nonfinite = ir.Constant(ir.VectorType(ir.IntType(1), V), None)
        for row in rows:  # v - v is 0 for a finite v and NaN for inf or NaN
            nonfinite = builder.or_(nonfinite, builder.fcmp_unordered(
                "!=", builder.fsub(row, row), ir.Constant(vector, None)))
        for j in range(V):
            column = ir.Constant(vector, ir.Undefined)
            for i, row in enumerate(rows):
                value = builder.extract_element(row, ir.Constant(i32, j))
                column = builder.insert_element(column, value, ir.Constant(i32, i))
            at = builder.add(wt_at_v, builder.mul(wt_stride_v, ir.Constant(index, j)))
            builder.store(column, vector_pointer(builder, wt_addr, element, at, vector),
                          align=align)
        any_bad = builder.bitcast(nonfinite, ir.IntType(V))
        return builder.icmp_unsigned("==", any_bad, ir.Constant(ir.IntType(V), 0))

    return sig, codegen


@njit(cache=True)
def transpose_finite(w, wt, k0, k1):
    """wt[k0:k1] = w[:, k0:k1]ᵀ for w (O, K), wt (K, O): input features [k0, k1) (a span, so
    threads can share the transpose); returns True when those weights are all finite.

    V×V tiles as vectors (``_transpose_tile``): a scalar loop writes wt a column at a time,
    one cache line per value. The edges go one value at a time.
    """
    O, K = w.shape
    V = VECTOR_BYTES // w.itemsize
    wa, wta = w.ctypes.data, wt.ctypes.data
    tiled_rows = O - O % V
    finite = True
    k = k0
    while k + V <= k1:
        for o in range(0, tiled_rows, V):
            finite &= _transpose_tile(w, wa, o * K + k, K, wta, k * O + o, O)
        k += V
    for o in range(O):  # the columns right of the tiles, and the rows below them
        for j in range(k if o < tiled_rows else k0, k1):
            v = w[o, j]
            wt[j, o] = v
            finite &= v - v == 0  # inf - inf and NaN - NaN are NaN
    return finite


@njit(cache=True)
def forward_rows(x, wt, b, out, index, positions, r0, r1):
    """out[r0:r1] = x[r0:r1]·wt + b over each row's nonzero inputs.

    x (N, K), wt (K, O) = wᵀ with finite values and O >= skip_block, b (O,), out (N, O), all
    C-contiguous of one dtype; index: int32 scratch of K + lanes entries. A last block of
    outputs short of skip_block ends at O and overlaps the block before (the same values).
    """
    N, K = x.shape
    O = wt.shape[1]
    width = SKIP_ACCUMULATORS * (ACCUMULATOR_BYTES // x.itemsize)
    wa, ba, oa = wt.ctypes.data, b.ctypes.data, out.ctypes.data
    xf = x.reshape(x.size)
    block = _new_skip_block(x)
    for n in range(r0, r1):
        m = _nonzeros(x, n * K, K, positions, index)
        for o_start in range(0, O, width):
            o0 = min(o_start, O - width)
            for j in range(m):
                k = np.int64(index[j])
                _axpy(block, x, xf[n * K + k], wa, k * O + o0)
            _flush(block, x, ba, o0, oa, n * O + o0)


def scratch(x, threads):
    """(index, positions) for forward_rows: one index row per thread."""
    index = np.empty((threads, x.shape[1] + _list_lanes(x.dtype)), dtype=np.int32)
    return index, _POSITIONS[x.dtype]
