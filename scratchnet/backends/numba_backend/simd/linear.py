"""A linear layer's products (numpy twin: numpy_backend/linear.py) in 512-bit register blocks.

    out = x·wᵀ + b        dw = doutᵀ·x        dx = dout·w

Which calls (``applies``): AVX-512 (``simd.wide_enabled``), float32 or float64 arrays of one
dtype, at least ``row_block`` input features (64 float32, 32 float64), more than
NARROW_OUTPUTS output features, and for the gradients an x and a w of at most STREAMED_MAX
values.

Why: at training batch sizes a GEMM library packs both operands into its own layout on every
call, and for these thin products the packing is most of the work; these kernels read the
operands in place.

Forward, ``forward_rows``: dot products along the contiguous rows of x and w (torch's (out, in)
layout, nothing transposed). A block of DOT_ROWS rows × DOT_OUTPUTS outputs keeps 24 vector
accumulators, each summing ``lanes`` interleaved partial sums over the input features; each is
then summed across its lanes pairwise (halves added), the features past the last whole vector
are added in order, then the bias.

Gradients, ``accumulate_rows``: c[r, :] = Σ_s S(r, s)·B[s, :], the scalars S read from a flat
array at r·row_step + s·sum_step, in register_block's 7 × 4 block. dw = doutᵀ·x is
S(o, n) = dout[n, o] with B = x; dx = dout·w is S(n, o) = dout[n, o] with B = w. A last block of
columns short of 4 vectors ends at the last column and overlaps the block before: the overlap
is zeroed and computed again with the same arithmetic, so it holds the same values.

Numbers are within float rounding of the GEMM's, not bitwise (``llvm.fmuladd``, other summation
orders); the parity tests hold both paths to torch's tolerances.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from . import register_block as rb
from . import enabled, wide_enabled
from .vectors import (VECTOR_BYTES, WIDE_VECTOR_BYTES, block_vectors, fmuladd, pointer, splat,
                      stack_block, vector_of, vector_pointer)

__all__ = ["applies", "row_block", "forward_rows", "accumulate_rows", "skips_zeros",
           "skip_block", "transpose_finite", "skip_zeros_rows", "skip_zeros_scratch"]

# a classifier head with this many outputs or fewer runs faster as BLAS's GEMM (in pieces of
# rows, linear.py): a block of DOT_OUTPUTS outputs would be mostly repeats
NARROW_OUTPUTS = 16
# accumulate_rows reads its operand B (x for dw, w for dx) once per block of rows of the
# result: past this many values B no longer stays in a core's cache between blocks, and the
# GEMM, which packs it once, is faster
STREAMED_MAX = 1 << 19
DOT_ROWS = 4
DOT_OUTPUTS = 6  # 24 accumulators + 4 rows of x + 1 row of w: 29 of the 32 vector registers


def row_block(dtype):
    """Input features per block of ``accumulate_rows``: 4 wide vectors (64 float32, 32 float64)."""
    return rb.columns(dtype)


_ROW_BLOCKS = {np.float32: row_block(np.float32), np.float64: row_block(np.float64)}


def applies(x, w, dout=None):
    """True when these kernels compute a linear layer's products on x (N, in), w (out, in) and,
    for the backward pass, dout (N, out): float32 or float64 of one dtype, at least a
    row_block of input features, more than NARROW_OUTPUTS output features, and for backward
    x and w of at most STREAMED_MAX values. Cheap tests first: it runs once per layer call."""
    dtype = x.dtype
    block = _ROW_BLOCKS.get(dtype.type)
    if block is None or x.shape[1] < block or w.shape[0] <= NARROW_OUTPUTS \
            or w.dtype != dtype:
        return False
    if dout is not None and (dout.dtype != dtype or x.size > STREAMED_MAX
                             or w.size > STREAMED_MAX):
        return False
    return wide_enabled()


def _dot_vector(context, like):
    element = context.get_value_type(like.dtype)
    return element, vector_of(element, WIDE_VECTOR_BYTES)


def _dot_accumulator(builder, block, i, j):
    i32 = ir.IntType(32)
    return builder.gep(block, [ir.Constant(i32, 0), ir.Constant(i32, i * DOT_OUTPUTS + j)],
                       inbounds=True)


@intrinsic
def _new_dot_block(typingctx, like):
    """A zeroed block of DOT_ROWS × DOT_OUTPUTS wide accumulators for arrays of like's dtype."""
    def codegen(context, builder, signature, args):
        _, vector = _dot_vector(context, like)
        return stack_block(builder, vector, DOT_ROWS * DOT_OUTPUTS)

    return types.voidptr(like), codegen


@intrinsic
def _dot_multiply_add(typingctx, block, like, x_address, x_at_address, w_address, w_at_address,
                      k):
    """acc[i, j] += x[x_at[i] + k : ... + V] · w[w_at[j] + k : ... + V] lane by lane, for
    i < DOT_ROWS, j < DOT_OUTPUTS; x_at, w_at: int64 offsets."""
    sig = types.void(block, like, x_address, x_at_address, w_address, w_at_address, k)

    def codegen(context, builder, signature, args):
        block_ptr, _, x_addr, x_at_addr, w_addr, w_at_addr, k_v = args
        element, vector = _dot_vector(context, like)
        acc = block_vectors(builder, block_ptr, vector, DOT_ROWS * DOT_OUTPUTS)
        fma = fmuladd(builder, vector)
        align = WIDE_VECTOR_BYTES // vector.count  # one element's: the loads are unaligned
        i64 = ir.IntType(64)

        def row(address, at_address, i):
            start = builder.load(pointer(builder, at_address, i64, ir.Constant(i64, i)))
            at = builder.add(start, k_v)
            return builder.load(vector_pointer(builder, address, element, at, vector),
                                align=align)

        rows = [row(x_addr, x_at_addr, i) for i in range(DOT_ROWS)]
        for j in range(DOT_OUTPUTS):
            weights = row(w_addr, w_at_addr, j)
            for i in range(DOT_ROWS):
                a = _dot_accumulator(builder, acc, i, j)
                builder.store(builder.call(fma, [rows[i], weights, builder.load(a)]), a)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _dot_sums(typingctx, block, like, sums_address):
    """sums[i·DOT_OUTPUTS + j] = acc[i, j] summed across its lanes (halves added pairwise:
    lanes l and l + V/2, then on), then zero the block."""
    sig = types.void(block, like, sums_address)

    def codegen(context, builder, signature, args):
        block_ptr, _, sums_addr = args
        element, vector = _dot_vector(context, like)
        acc = block_vectors(builder, block_ptr, vector, DOT_ROWS * DOT_OUTPUTS)
        i32 = ir.IntType(32)
        i64 = ir.IntType(64)
        for i in range(DOT_ROWS):
            for j in range(DOT_OUTPUTS):
                a = _dot_accumulator(builder, acc, i, j)
                v = builder.load(a)
                width = vector.count
                while width > 1:
                    width //= 2
                    low = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, width),
                                                                   list(range(width))))
                    high = builder.shuffle_vector(v, v, ir.Constant(
                        ir.VectorType(i32, width), list(range(width, 2 * width))))
                    v = builder.fadd(low, high)
                total = builder.extract_element(v, ir.Constant(i32, 0))
                builder.store(total, pointer(builder, sums_addr, element,
                                             ir.Constant(i64, i * DOT_OUTPUTS + j)))
                builder.store(ir.Constant(vector, None), a)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True)
def forward_rows(x, w, b, out, n0, n1, o0, o1):
    """out[n0:n1, o0:o1] = x[n0:n1]·w[o0:o1]ᵀ + b[o0:o1] (b zeros for a layer without bias).

    x (N, K), w (O, K), b (O,), out (N, O), all C-contiguous, of one dtype. A short last block
    repeats its last row or output, which computes the same value again (written once).
    """
    K = x.shape[1]
    V = WIDE_VECTOR_BYTES // x.itemsize
    whole = K - K % V
    x_at = np.empty(DOT_ROWS, np.int64)
    w_at = np.empty(DOT_OUTPUTS, np.int64)
    sums = np.empty(DOT_ROWS * DOT_OUTPUTS, x.dtype)
    xa, wa, sa = x.ctypes.data, w.ctypes.data, sums.ctypes.data
    xa_at, wa_at = x_at.ctypes.data, w_at.ctypes.data
    block = _new_dot_block(x)
    for r in range(n0, n1, DOT_ROWS):
        for i in range(DOT_ROWS):
            x_at[i] = min(r + i, n1 - 1) * K
        for c in range(o0, o1, DOT_OUTPUTS):
            for j in range(DOT_OUTPUTS):
                w_at[j] = min(c + j, o1 - 1) * K
            for k in range(0, whole, V):
                _dot_multiply_add(block, x, xa, xa_at, wa, wa_at, k)
            _dot_sums(block, x, sa)
            for i in range(min(DOT_ROWS, n1 - r)):
                n = r + i
                for j in range(min(DOT_OUTPUTS, o1 - c)):
                    o = c + j
                    s = sums[i * DOT_OUTPUTS + j]
                    for k in range(whole, K):
                        s += x[n, k] * w[o, k]
                    out[n, o] = s + b[o]


@njit(cache=True)
def accumulate_rows(sf, row_step, sum_step, B, c, r0, r1):
    """c[r] = Σ_s sf[r·row_step + s·sum_step]·B[s] for rows r in [r0, r1) of c, overwritten.

    sf: the scalars, flat; B (S, K) and c (R, K) C-contiguous, of sf's dtype, K >= row_block.
    """
    S, K = B.shape
    width = rb.VECTORS * (WIDE_VECTOR_BYTES // B.itemsize)
    at = np.empty(rb.ROWS, np.int64)
    ba, sa, ca, at_a = B.ctypes.data, sf.ctypes.data, c.ctypes.data, at.ctypes.data
    for r in range(r0, r1):
        for j in range(K):
            c[r, j] = 0
    block = rb.new_block(B)
    for r in range(r0, r1, rb.ROWS):
        count = min(rb.ROWS, r1 - r)
        for i in range(rb.ROWS):
            at[i] = min(r + i, r1 - 1) * row_step
        for k0 in range(0, K, width):
            k = min(k0, K - width)
            if k < k0:  # the last block overlaps the one before: zero the overlap first
                for i in range(count):
                    for j in range(k, k0):
                        c[r + i, j] = 0
            for s in range(S):
                rb.multiply_add(block, B, ba, s * K + k, sa, at_a, s * sum_step)
            rb.add_rows(block, B, ca, K, k, r, count)


# The forward pass over an input that is mostly exact zeros (MNIST's background pixels), at
# inference batch sizes: each row's nonzero inputs are listed, and only their weight rows are
# added, from wᵀ (in, out), into SKIP_ACCUMULATORS vectors of outputs kept in registers.
#
#     out[n, o] = Σ_{k : x[n, k] != 0} x[n, k]·w[o, k] + b[o]        (k ascending)
#
# A skipped term is ±0·w, which leaves a sum unchanged only while w is finite (0·inf is NaN),
# so the transposition checks every weight and the path is not taken otherwise. An input NaN
# or inf is nonzero and taken.

SKIP_ACCUMULATORS = 8  # 256-bit vectors: 8 accumulators and 1 broadcast of 16 registers
SKIP_MIN_ROWS = 256  # below, transposing w per call costs more than the skipped work saves
SKIP_MAX_DENSITY = 0.25  # the most nonzero inputs for which skipping the rest pays
SKIP_DENSITY_ROWS = 16  # rows sampled across the batch to estimate the density
SKIP_MIN_ROWS_PER_THREAD = 32


def _skip_lanes(dtype):
    return VECTOR_BYTES // np.dtype(dtype).itemsize


def skip_block(dtype):
    """Outputs per block of the zero-skipping product: 64 float32, 32 float64."""
    return SKIP_ACCUMULATORS * _skip_lanes(dtype)


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


def skips_zeros(x, w):
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


_POSITIONS = {np.dtype(t): _positions_table(_skip_lanes(t)) for t in (np.float32, np.float64)}


def _skip_vector(context, like):
    element = context.get_value_type(like.dtype)
    return element, vector_of(element, VECTOR_BYTES)


@intrinsic
def _new_skip_block(typingctx, like):
    """SKIP_ACCUMULATORS zeroed 256-bit vectors for arrays of like's dtype."""
    def codegen(context, builder, signature, args):
        _, vector = _skip_vector(context, like)
        return stack_block(builder, vector, SKIP_ACCUMULATORS)

    return types.voidptr(like), codegen


def _skip_accumulator(builder, block, j):
    i32 = ir.IntType(32)
    return builder.gep(block, [ir.Constant(i32, 0), ir.Constant(i32, j)], inbounds=True)


@intrinsic
def _axpy(typingctx, block, like, value, w_address, w_at):
    """acc[j] += value · w[w_at + j·V : ... + V] for j < SKIP_ACCUMULATORS."""
    def codegen(context, builder, signature, args):
        block_ptr, _, value_v, w_addr, w_at_v = args
        element, vector = _skip_vector(context, like)
        acc = block_vectors(builder, block_ptr, vector, SKIP_ACCUMULATORS)
        fma = fmuladd(builder, vector)
        scale = splat(builder, vector, value_v)
        align = VECTOR_BYTES // vector.count
        for j in range(SKIP_ACCUMULATORS):
            at = builder.add(w_at_v, ir.Constant(w_at_v.type, j * vector.count))
            weights = builder.load(vector_pointer(builder, w_addr, element, at, vector),
                                   align=align)
            a = _skip_accumulator(builder, acc, j)
            builder.store(builder.call(fma, [scale, weights, builder.load(a)]), a)
        return context.get_dummy_value()

    return types.void(block, like, value, w_address, w_at), codegen


@intrinsic
def _flush(typingctx, block, like, b_address, b_at, out_address, out_at):
    """out[out_at + j·V : ... + V] = acc[j] + b[b_at + j·V : ... + V], then zero the block."""
    def codegen(context, builder, signature, args):
        block_ptr, _, b_addr, b_at_v, out_addr, out_at_v = args
        element, vector = _skip_vector(context, like)
        acc = block_vectors(builder, block_ptr, vector, SKIP_ACCUMULATORS)
        align = VECTOR_BYTES // vector.count
        for j in range(SKIP_ACCUMULATORS):
            step = ir.Constant(b_at_v.type, j * vector.count)
            bias = builder.load(vector_pointer(builder, b_addr, element,
                                               builder.add(b_at_v, step), vector), align=align)
            a = _skip_accumulator(builder, acc, j)
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
        element, vector = _skip_vector(context, like)
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


@njit(cache=True)
def transpose_finite(w, wt):
    """wt = wᵀ for w (O, K), wt (K, O); returns True when every weight is finite."""
    O, K = w.shape
    finite = True
    for o in range(O):
        for k in range(K):
            v = w[o, k]
            wt[k, o] = v
            finite &= v - v == 0  # inf - inf and NaN - NaN are NaN
    return finite


@njit(cache=True)
def skip_zeros_rows(x, wt, b, out, index, positions, r0, r1):
    """out[r0:r1] = x[r0:r1]·wt + b over each row's nonzero inputs.

    x (N, K), wt (K, O) = wᵀ with finite values and O >= skip_block, b (O,), out (N, O), all
    C-contiguous of one dtype; index: int32 scratch of K + lanes entries. A last block of
    outputs short of skip_block ends at O and overlaps the block before (the same values).
    """
    N, K = x.shape
    O = wt.shape[1]
    width = SKIP_ACCUMULATORS * (VECTOR_BYTES // x.itemsize)
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


def skip_zeros_scratch(x, threads):
    """(index, positions) for skip_zeros_rows: one index row per thread."""
    index = np.empty((threads, x.shape[1] + _skip_lanes(x.dtype)), dtype=np.int32)
    return index, _POSITIONS[x.dtype]
