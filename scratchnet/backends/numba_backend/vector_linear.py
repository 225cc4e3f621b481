"""Linear-layer products at training batch sizes, in 512-bit register blocks, without packing.

Which calls (``applies``): a CPU with AVX-512 (``simd.has_wide_vectors``), float32 or float64,
and at least one block of input features (``row_block``: 64 float32, 32 float64): every linear
layer of the models, training and inference, except where sparse_linear.py skips zeros. And
the same products inside conv.py, along a layer's OH·OW output pixels: an im2col layer's
forward product conv2 = w2·col (one group), its weight gradient dWᵀ += col·doutᵀ and bias
gradient db += dout·1 as dot products (``conv.uses_vector_products``: enough pixels), and a
filter-vector layer's input-gradient columns dcol = w2ᵀ·dout (one block of pixels). There, at widecnn's conv1 (1 → 150, 5×5, 784 pixels)
on two threads: forward 2.12 → 1.72 ms and backward 4.12 → 2.74 ms per batch of 50; mitxcnn's
conv1 backward 297 → 181 µs per batch of 32; digitcnn's conv2 backward 2.32 → 2.08 ms per 64.

Why: OpenBLAS packs both operands into its own layout on every call, and at training batch
sizes that is most of the work. Measured on one core of the 2-core Zen 5 (float32), these
kernels against linear.py's OpenBLAS calls, forward / dW / dx in µs:

- mlp128's first layer at batch 32 (32 × 784 by 784 × 128): 38 / 36 / 36 against 66 / 59 / 68
  (OpenBLAS at 50-58 GFLOP/s, 131 on a 2048² product; these at 167-177);
- mitxcnn's fc1 at batch 32 (1600 → 128): 90 / 71 / 77 against 134 / 121 / 138;
- widecnn's fc1 at batch 50 (3136 → 1024): 2751 / 1890 / 1873 against 3300 / 2859 / 3366;
- mlp's 784 → 10 at batch 1000 (inference): 113 against 259 µs forward; mlp128's first layer
  at batch 1000, 1241 against 1744 µs.

Forward, ``forward_rows``: out[n, o] = Σ_k x[n, k]·w[o, k] + b[o], dot products along the
contiguous rows of x and w (torch's (out, in) layout: no transposition). A block of
``DOT_ROWS`` (4) rows × ``DOT_OUTPUTS`` (6) outputs keeps 24 vector accumulators, each summing
``lanes`` interleaved partial sums over the input features (per step: 4 + 6 vector loads, 24
multiply-adds); then each accumulator is summed across its lanes pairwise (halves added, 16 →
8 → 4 → 2 → 1), the features past the last whole vector are added in order, then the bias.

Gradients, ``accumulate_rows``: c[r, :] = Σ_s S(r, s)·B[s, :] with the scalars S read from a
flat array at r·row_step + s·sum_step. dW = doutᵀ·x is S(o, n) = dout[n, o] with B = x;
dx = dout·w is S(n, o) = dout[n, o] with B = w. A block is filter_vector_conv's: 7 rows of c ×
4 vectors of columns in 28 accumulators, per s 4 vector loads of B's row s and 7 broadcast
scalars, summed over s in order. A last block of columns short of 4 vectors ends at the last
column instead and overlaps the block before: the overlap is zeroed first and computed again
with the same arithmetic, so it holds the same values.

Numbers: within float rounding of the GEMM's, not bitwise (``llvm.fmuladd``, other summation
orders); the parity tests hold both to torch's tolerances. Called by address
(``forward_address``, ``accumulate_address``, ``call``): compiled into linear.py's blocks, LLVM
inlined them there and the same loops ran 1.4-1.8x slower (dW at mlp128's shape: 42 µs alone,
59 inside a one-line wrapper, 74 with the bias gradient's loop beside it). Not taken under
``NUMBA_DISABLE_JIT`` (no intrinsics), nor without AVX-512 (28 accumulators need its 32
registers).
"""
import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

from .filter_vector_conv import PIXELS, VECTORS, add_rows, multiply_add, new_block
from .per_thread import call_fixed, fixed_address
from .simd import (WIDE_VECTOR_BYTES, fmuladd, has_wide_vectors, lanes, vector_pointer,
                   vector_type, zeroed_block)

__all__ = ["applies", "row_block", "forward_rows", "accumulate_rows", "forward_address",
           "accumulate_address", "call"]

DOT_ROWS = 4
DOT_OUTPUTS = 6  # 24 accumulators + 4 rows of x + 1 row of w = 29 of the 32 vector registers


def row_block(dtype):
    """Columns per block of ``accumulate_rows``: 4 wide vectors (64 float32, 32 float64)."""
    return VECTORS * lanes(dtype, WIDE_VECTOR_BYTES)


def applies(K, dtype):
    """True when these kernels compute the products of a linear layer with K input features."""
    dtype = np.dtype(dtype)
    return (not numba.config.DISABLE_JIT and has_wide_vectors()
            and dtype.type in (np.float32, np.float64) and K >= row_block(dtype))


def _wide(context, array_type):
    return vector_type(context, array_type, WIDE_VECTOR_BYTES)


def _dot_accumulators(builder, block, vector):
    block = builder.bitcast(block, ir.ArrayType(vector, DOT_ROWS * DOT_OUTPUTS).as_pointer())
    return [[builder.gep(block, [ir.Constant(ir.IntType(32), 0),
                                 ir.Constant(ir.IntType(32), i * DOT_OUTPUTS + j)])
             for j in range(DOT_OUTPUTS)] for i in range(DOT_ROWS)]


@intrinsic
def _new_dot_block(typingctx, like):
    """A zeroed block of DOT_ROWS × DOT_OUTPUTS wide accumulators, dtype of the array ``like``."""
    def codegen(context, builder, signature, args):
        return zeroed_block(context, builder, like, DOT_ROWS * DOT_OUTPUTS, WIDE_VECTOR_BYTES)

    return types.voidptr(like), codegen


@intrinsic
def _dot_multiply_add(typingctx, block, xf, x_at, wf, w_at, k):
    """accumulator (i, j) += xf[x_at[i] + k : ... + V] · wf[w_at[j] + k : ... + V]."""
    sig = types.void(block, xf, x_at, wf, w_at, k)

    def codegen(context, builder, signature, args):
        block_ptr, x_array, x_at_array, w_array, w_at_array, k_v = args
        vector = _wide(context, xf)
        acc = _dot_accumulators(builder, block_ptr, vector)
        multiply_add = fmuladd(builder, vector)
        align = WIDE_VECTOR_BYTES // vector.count  # an element's: the loads are unaligned

        def row(at_type, at_array, array_type, array, i):
            start = builder.load(builder.gep(
                context.make_array(at_type)(context, builder, at_array).data,
                [ir.Constant(k_v.type, i)]))
            return builder.load(vector_pointer(context, builder, array_type, array,
                                               builder.add(start, k_v), vector), align=align)

        rows = [row(x_at, x_at_array, xf, x_array, i) for i in range(DOT_ROWS)]
        for j in range(DOT_OUTPUTS):
            weights = row(w_at, w_at_array, wf, w_array, j)
            for i in range(DOT_ROWS):
                builder.store(builder.call(multiply_add,
                                           [rows[i], weights, builder.load(acc[i][j])]),
                              acc[i][j])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _dot_sums(typingctx, block, sums):
    """sums[i·DOT_OUTPUTS + j] = accumulator (i, j) summed across its lanes (halves added
    pairwise: lanes l and l + V/2, then on); the block is zeroed."""
    sig = types.void(block, sums)

    def codegen(context, builder, signature, args):
        block_ptr, sums_array = args
        vector = _wide(context, sums)
        acc = _dot_accumulators(builder, block_ptr, vector)
        i32 = ir.IntType(32)
        data = context.make_array(sums)(context, builder, sums_array).data
        for i in range(DOT_ROWS):
            for j in range(DOT_OUTPUTS):
                v = builder.load(acc[i][j])
                width = vector.count
                while width > 1:
                    width //= 2
                    low = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, width),
                                                                   list(range(width))))
                    high = builder.shuffle_vector(v, v, ir.Constant(
                        ir.VectorType(i32, width), list(range(width, 2 * width))))
                    v = builder.fadd(low, high)
                total = builder.extract_element(v, ir.Constant(i32, 0))
                builder.store(total, builder.gep(data, [ir.Constant(i32, i * DOT_OUTPUTS + j)]))
                builder.store(ir.Constant(vector, None), acc[i][j])
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True)
def forward_rows(x, w, b, out, n0, n1, o0, o1, add):
    """out[n0:n1, o0:o1] = x[n0:n1]·w[o0:o1]ᵀ + b[o0:o1] (b zeros for a layer without bias),
    or with ``add`` (nonzero) out[n0:n1, o0:o1] += x·wᵀ + b.

    x (N, K), w (O, K), b (O,), out (N, O), all C-contiguous. Short last blocks repeat the
    last row or output, which computes the same value again (written once).
    """
    K = x.shape[1]
    O = w.shape[0]
    xf = x.reshape(x.size)
    wf = w.reshape(w.size)
    V = WIDE_VECTOR_BYTES // x.itemsize
    whole = K - K % V
    x_at = np.empty(DOT_ROWS, np.int64)
    w_at = np.empty(DOT_OUTPUTS, np.int64)
    sums = np.empty(DOT_ROWS * DOT_OUTPUTS, x.dtype)
    block = _new_dot_block(xf)
    for r in range(n0, n1, DOT_ROWS):
        for i in range(DOT_ROWS):
            x_at[i] = min(r + i, n1 - 1) * K
        for c in range(o0, o1, DOT_OUTPUTS):
            for j in range(DOT_OUTPUTS):
                w_at[j] = min(c + j, o1 - 1) * K
            for k in range(0, whole, V):
                _dot_multiply_add(block, xf, x_at, wf, w_at, k)
            _dot_sums(block, sums)
            for i in range(min(DOT_ROWS, n1 - r)):
                n = r + i
                for j in range(min(DOT_OUTPUTS, o1 - c)):
                    o = c + j
                    s = sums[i * DOT_OUTPUTS + j]
                    for k in range(whole, K):
                        s += x[n, k] * w[o, k]
                    if add:
                        out[n, o] += s + b[o]
                    else:
                        out[n, o] = s + b[o]



@njit(cache=True)
def accumulate_rows(sf, row_step, sum_step, B, c, r0, r1):
    """c[r] = Σ_s sf[r·row_step + s·sum_step]·B[s] for rows r in [r0, r1) of c, overwritten.

    sf: the scalars, flat; B (S, K) and c (R, K) C-contiguous with K >= row_block. c's rows
    r0 .. r1 - 1 must be zero on entry (the blocks add into them).
    """
    S, K = B.shape
    bf = B.reshape(B.size)
    cf = c.reshape(c.size)
    width = VECTORS * (WIDE_VECTOR_BYTES // B.itemsize)
    at = np.empty(PIXELS, np.int64)
    block = new_block(bf)
    for r in range(r0, r1, PIXELS):
        count = min(PIXELS, r1 - r)
        for i in range(PIXELS):
            at[i] = min(r + i, r1 - 1) * row_step
        for k0 in range(0, K, width):
            k = min(k0, K - width)
            if k < k0:  # the last block overlaps the one before: zero the overlap first
                for i in range(count):
                    for j in range(k, k0):
                        c[r + i, j] = 0
            for s in range(S):
                multiply_add(block, bf, s * K + k, sf, at, s * sum_step)
            add_rows(block, cf, K, k, r, count)


def _forward_types(dtype):
    dt = numba.from_dtype(np.dtype(dtype))
    return (types.Array(dt, 2, "C"), types.Array(dt, 2, "C"), types.Array(dt, 1, "C"),
            types.Array(dt, 2, "C")) + (types.int64,) * 5


def _accumulate_types(dtype):
    dt = numba.from_dtype(np.dtype(dtype))
    return ((types.Array(dt, 1, "C"), types.int64, types.int64, types.Array(dt, 2, "C"),
             types.Array(dt, 2, "C"), types.int64, types.int64))


def forward_address(dtype):
    """Address of forward_rows for ``dtype``, for ``call``."""
    return fixed_address(forward_rows, dtype, _forward_types)


def accumulate_address(dtype):
    """Address of accumulate_rows for ``dtype``, for ``call``."""
    return fixed_address(accumulate_rows, dtype, _accumulate_types)


def call(at, args):
    """forward_rows(*args) or accumulate_rows(*args), compiled at address ``at``. Compiled
    code only (``applies`` is False with the JIT off)."""
    raise NotImplementedError("vector_linear.call runs in compiled code only")


@overload(call, jit_options={"cache": True})
def _call_nopython(at, args):
    # a call through an address has no dispatcher to check the types: they must be exactly
    # one of the two kernels' (the tuple's length tells which)
    if not isinstance(args, types.BaseTuple) or not isinstance(args.types[0], types.Array):
        raise TypingError("vector_linear.call: args must be a kernel's argument tuple")
    dtype = np.dtype(str(args.types[0].dtype))
    expected = _forward_types(dtype) if len(args.types) == 9 else _accumulate_types(dtype)
    if tuple(args.types) != expected:
        raise TypingError(f"vector_linear.call: argument types {args.types}, "
                          f"expected {expected}")

    def impl(at, args):
        call_fixed(at, args)
    return impl
