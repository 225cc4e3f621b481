"""Matrix products in 512-bit register blocks, read in place: a linear layer's three products
(numpy twin: numpy_backend/linear.py) and a convolution's two backward im2col ones (conv.py).

    forward_rows:     out = x·wᵀ + b            dot products along rows of x and w
    accumulate_rows:  c[r] = Σ_j s[r, j]·B[j]    rows of B scaled and summed

A linear layer's out = x·wᵀ + b is ``forward_rows``; its dw = doutᵀ·x and dx = dout·w are
``accumulate_rows`` (see its docstring). A convolution's input-gradient columns wᵀ·dy are
``accumulate_rows``, its weight gradient cols·dyᵀ is ``forward_rows`` adding into the partial
sums.

Which calls: AVX-512 (``simd.wide_enabled``), float32 or float64 arrays of one dtype, rows of
at least ``row_block`` values (64 float32, 32 float64) along the summed or the vector axis:
``applies`` for a linear layer (its input features), ``products_apply`` for a convolution (its
output positions).

Why: a GEMM library packs both operands into its own layout on every call, and for these thin
products (tens of rows, or a few taps by thousands of positions) the packing is much of the
work; these kernels read the operands where they lie. How much that buys depends on the BLAS
kernels the machine gets (docs/performance.md).

``forward_rows``: a block of DOT_ROWS rows × DOT_OUTPUTS outputs keeps 24 vector accumulators,
each summing ``lanes`` interleaved partial sums along the rows; each is then summed across its
lanes pairwise (halves added), the values past the last whole vector are added in order, then
the bias. Rows outer, so a block of rows of x stays in cache while w streams past.

``accumulate_rows``: register_block.py's block of ROWS rows of c × VECTORS vectors of columns,
one broadcast scalar per row and step, summed over j in order.

Numbers are within float rounding of the GEMM's, not bitwise (``llvm.fmuladd``, another
summation order); the parity tests hold both paths to torch's tolerances.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from . import register_block as rb
from . import wide_enabled
from .vectors import (WIDE_VECTOR_BYTES, block_vectors, element_and_vector, fmuladd,
                      new_block_intrinsic, pointer, slot, vector_pointer)

__all__ = ["applies", "products_apply", "row_block", "forward_rows", "accumulate_rows"]

DOT_ROWS = 4
DOT_OUTPUTS = 6  # 24 accumulators + 4 rows of x + 1 row of w: 29 of the 32 vector registers


def row_block(dtype):
    """The shortest rows the kernels are chosen for: 4 wide vectors (64 float32, 32 float64), so
    that the lanes' reduction at the end of each dot product is a small part, and a block of
    accumulate_rows' columns is whole."""
    return 4 * WIDE_VECTOR_BYTES // np.dtype(dtype).itemsize


_ROW_BLOCKS = {np.float32: row_block(np.float32), np.float64: row_block(np.float64)}


def applies(x, w):
    """True when a linear layer's products run here: x (N, in)·wᵀ for w (out, in) by
    forward_rows, its gradients by accumulate_rows. float32 or float64 of one dtype and at
    least a row_block of input features."""
    block = _ROW_BLOCKS.get(x.dtype.type)
    if block is None or x.shape[1] < block or w.dtype != x.dtype:
        return False
    return wide_enabled()


def products_apply(length, dtype):
    """True when a convolution's backward im2col products, whose rows are ``length`` long (its
    output positions), run on forward_rows and accumulate_rows: a float dtype and a
    row_block."""
    block = _ROW_BLOCKS.get(np.dtype(dtype).type)
    return block is not None and length >= block and wide_enabled()


# a zeroed block of DOT_ROWS × DOT_OUTPUTS wide accumulators
_new_dot_block = new_block_intrinsic(WIDE_VECTOR_BYTES, DOT_ROWS * DOT_OUTPUTS)


@intrinsic
def _dot_multiply_add(typingctx, block, like, x_address, x_at_address, w_address, w_at_address,
                      k):
    """acc[i, j] += x[x_at[i] + k : ... + V] · w[w_at[j] + k : ... + V] lane by lane, for
    i < DOT_ROWS, j < DOT_OUTPUTS; x_at, w_at: int64 offsets."""
    sig = types.void(block, like, x_address, x_at_address, w_address, w_at_address, k)

    def codegen(context, builder, signature, args):
        block_ptr, _, x_addr, x_at_addr, w_addr, w_at_addr, k_v = args
        element, vector = element_and_vector(context, like, WIDE_VECTOR_BYTES)
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
                a = slot(builder, acc, i * DOT_OUTPUTS + j)
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
        element, vector = element_and_vector(context, like, WIDE_VECTOR_BYTES)
        acc = block_vectors(builder, block_ptr, vector, DOT_ROWS * DOT_OUTPUTS)
        i32 = ir.IntType(32)
        i64 = ir.IntType(64)
        for i in range(DOT_ROWS):
            for j in range(DOT_OUTPUTS):
                a = slot(builder, acc, i * DOT_OUTPUTS + j)
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
def forward_rows(x, w, b, out, n0, n1, o0, o1, add):
    """out[n0:n1, o0:o1] = x[n0:n1]·w[o0:o1]ᵀ + b[o0:o1], or with ``add`` out[n0:n1, o0:o1] +=
    x·wᵀ + b; an empty b adds no bias.

    x (N, K), w (O, K), b (O,) or (0,), out (N, O), all C-contiguous, of one dtype. A short
    last block repeats its last row or output, which computes the same value again (written
    once).
    """
    K = x.shape[1]
    V = WIDE_VECTOR_BYTES // x.itemsize
    whole = K - K % V
    has_bias = b.shape[0] > 0
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
                    if has_bias:
                        s += b[o]
                    if add:
                        out[n, o] += s
                    else:
                        out[n, o] = s


@njit(cache=True)
def accumulate_rows(s, row_step, sum_step, B, c, r0, r1):
    """c[r] = Σ_j s.flat[r·row_step + j·sum_step] · B[j] for rows r in [r0, r1) of c, summed
    over j in order and overwriting c's rows.

    B (S, K) and c (R, K) C-contiguous with K >= row_block(dtype), s C-contiguous, all of one
    dtype. dw = doutᵀ·x is (s, row_step, sum_step, B) = (dout, 1, O, x); dx = dout·w is
    (dout, O, 1, w). A last block of columns short of row_block ends at column K and overlaps
    the block before: the overlap is zeroed and summed again to the same values.
    """
    S, K = B.shape
    width = rb.VECTORS * (WIDE_VECTOR_BYTES // B.itemsize)
    s_index = np.empty(rb.ROWS, np.int64)
    sa, ba, ca, ia = s.ctypes.data, B.ctypes.data, c.ctypes.data, s_index.ctypes.data
    block = rb.new_block(B)
    for r in range(r0, r1, rb.ROWS):
        count = min(rb.ROWS, r1 - r)
        for i in range(rb.ROWS):
            s_index[i] = min(r + i, r1 - 1) * row_step
        for i in range(count):
            for k in range(K):
                c[r + i, k] = 0
        for k0 in range(0, K, width):
            k = min(k0, K - width)
            for i in range(count):  # the overlap with the block before, if any
                for j in range(k, k0):
                    c[r + i, j] = 0
            for j in range(S):
                rb.multiply_add(block, B, ba, j * K + k, sa, ia, j * sum_step)
            rb.add_rows(block, B, ca, K, k, r, count)
