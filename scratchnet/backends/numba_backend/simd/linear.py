"""A linear layer's forward pass (numpy twin: numpy_backend/linear.py) in 512-bit register blocks.

    out = x·wᵀ + b

Which calls (``applies``): AVX-512 (``simd.wide_enabled``), float32 or float64 arrays of one
dtype, at most MAX_ROWS rows (training batches), at least ``row_block`` input features (64
float32, 32 float64), more than NARROW_OUTPUTS output features and at most MAX_WEIGHTS
weights.

Why: at training batch sizes a GEMM library packs both operands into its own layout on every
call, and for these thin products the packing is most of the work; this kernel reads the
operands in place.

Forward, ``forward_rows``: dot products along the contiguous rows of x and w (torch's (out, in)
layout, nothing transposed), each block of outputs over every row in turn, so that its rows of
w stay in cache while the (few) rows of x stream past. A block of DOT_ROWS rows × DOT_OUTPUTS
outputs keeps 24 vector accumulators, each summing ``lanes`` interleaved partial sums over the
input features; each is then summed across its lanes pairwise (halves added), the features
past the last whole vector are added in order, then the bias.

Numbers are within float rounding of the GEMM's, not bitwise (``llvm.fmuladd``, another
summation order); the parity tests hold both paths to torch's tolerances.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from . import wide_enabled
from .vectors import (WIDE_VECTOR_BYTES, block_vectors, fmuladd, pointer, stack_block,
                      vector_of, vector_pointer)

__all__ = ["applies", "row_block", "forward_rows"]

# a classifier head with this many outputs or fewer runs faster as BLAS's GEMM (in pieces of
# rows, linear.py): a block of DOT_OUTPUTS outputs would be mostly repeats
NARROW_OUTPUTS = 16
# training batch sizes: for more rows the GEMM's packing is paid once for enough work, and the
# GEMM is faster
MAX_ROWS = 64
# a larger w comes from memory for every block of rows of x; the GEMM, which packs it once, is
# then as fast
MAX_WEIGHTS = 1 << 19
DOT_ROWS = 4
DOT_OUTPUTS = 6  # 24 accumulators + 4 rows of x + 1 row of w: 29 of the 32 vector registers


def row_block(dtype):
    """The fewest input features the kernel is chosen for: 4 wide vectors (64 float32, 32
    float64), so that the lanes' reduction at the end of each dot product is a small part."""
    return 4 * WIDE_VECTOR_BYTES // np.dtype(dtype).itemsize


_ROW_BLOCKS = {np.float32: row_block(np.float32), np.float64: row_block(np.float64)}


def applies(x, w):
    """True when forward_rows computes x (N, in)·wᵀ for w (out, in): float32 or float64 of one
    dtype, at most MAX_ROWS rows, at least a row_block of input features, more than
    NARROW_OUTPUTS output features and at most MAX_WEIGHTS weights. Cheap tests first: it
    runs once per layer call."""
    dtype = x.dtype
    block = _ROW_BLOCKS.get(dtype.type)
    if block is None or x.shape[1] < block or w.shape[0] <= NARROW_OUTPUTS \
            or x.shape[0] > MAX_ROWS or w.size > MAX_WEIGHTS or w.dtype != dtype:
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
    for c in range(o0, o1, DOT_OUTPUTS):
        for j in range(DOT_OUTPUTS):
            w_at[j] = min(c + j, o1 - 1) * K
        for r in range(n0, n1, DOT_ROWS):
            for i in range(DOT_ROWS):
                x_at[i] = min(r + i, n1 - 1) * K
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
