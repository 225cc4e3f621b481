"""Direct convolution, register-blocked, for layers where im2col + GEMM is mostly overhead.

Which layers (``applies``): stride 1, no padding or dilation, one group, a kernel larger than
1×1, 4-20 filters, at most 256 taps (C·KH·KW), and output rows that split into vectors of ``V``
values (8 float32 or 4 float64 in a 256-bit register) with at most 25 % recomputed. In the
models: lenet's two convolutions. There the GEMM is small (M = F of 10 and 20, K = C·KH·KW of 25
and 250), so OpenBLAS runs it at 48-74 GFLOP/s on one core, and im2col costs nearly as much
again. Per sample on one core, im2col + GEMM + bias against this kernel: lenet conv1 11.5 µs
against 7.1, lenet conv2 16.3 against 7.6 (84 GFLOP/s); lenet's inference at batch 1000 went
from 1.44x torch's throughput to 2.5x (benchmark suite, README). Where the GEMM is large, im2col
+ GEMM wins: widecnn's conv1 shape (150 filters) 86 µs against 100, its conv2 shape (3,750 taps,
whose input no longer fits the core's L1 cache) 1.4 ms against 2.1, digitcnn's conv2 (OW = 11:
16 vector slots for 11 outputs) 82 µs against 98. digitcnn's conv1 (32 filters, 9 taps) ran 25 %
faster direct, 13.3 against 10.0 µs, but is left out (``MAX_FILTERS``): in digitcnn and mitxcnn
it changed no step measurably (conv2 is 80 % of one) and cost 2.8 s more compile time, a second
forward worker beside conv2's (conv.conv_sample).

How: output value (f, oh, ow) is Σ_r w2[f, r] · x[n, c, oh + kh, ow + kw] over the taps
r = (c·KH + kh)·KW + kw, in that order (the GEMM's k order), plus b[f]. A block of
``FILTERS`` (4) filters × ``VECTORS`` (3) output vectors, each V consecutive outputs of one row,
is accumulated in 12 vector registers over all taps: per tap 3 unaligned vector loads of the
input, 4 broadcast weights, 12 multiply-adds, and nothing is written until the block is done.
Blocks of filters that do not divide F end at F (the last overlaps the one before and writes
the same values again); so does the last vector of a row. Both recompute with the same
arithmetic, so every output is written with one value.

Why LLVM IR: written as plain loops, Numba's code was 3-10x slower than im2col + GEMM (the loop
vectoriser sees trip counts of 8-26 and an output that may alias the input, so it runs the
scalar remainder loop; by hand over a local 8-value block it did not vectorise at all). So the
vector operations are three small intrinsics (``_new_block``, ``_tap``, ``_flush``) that emit
LLVM vector instructions; the loops around them are ordinary Numba code. ``llvm.fmuladd`` lets
LLVM fuse each multiply-add where the CPU has FMA: with separate multiplies and adds the 12
accumulators, 3 input vectors and a product did not fit the 16 registers and spilled (2x
slower). The block's array of 12 vectors lives on the stack and LLVM keeps it in registers.

Called through its address (``address``, ``call``), not inlined: its caller (conv.py's
``_direct_sample``, itself called by address from the workers) holds one call instead of this
kernel's code, so the kernel compiles once, as its own function, and not again inside each
caller's module (1-1.5 s of compile time per worker here). One indirect call per sample costs
nothing next to the sample's 7-10 µs.

Numbers: not bitwise the GEMM's (OpenBLAS orders and fuses its sums its own way) but within
float rounding of them; the parity tests hold it to torch's tolerances. Fused and plain
convolutions take this path for the same layers, so they stay bitwise equal to each other.
Under ``NUMBA_DISABLE_JIT`` (no intrinsics) ``applies`` is False and im2col + GEMM runs.
"""
import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

from .per_thread import call_fixed, fixed_address
from .simd import (VECTOR_BYTES, element_pointer, fmuladd, lanes, splat, vector_pointer,
                   vector_type, zeroed_block)

__all__ = ["applies", "address", "call", "conv_direct_sample", "FILTERS", "VECTORS"]

FILTERS = 4  # filters per block
VECTORS = 3  # output vectors per block: 12 accumulators + 3 input vectors + 1 weight = 16 ymm
# the most of a row's vector slots that may recompute outputs of the vector before: digitcnn's
# conv2 (OW = 11: 16 slots for 11 outputs) ran 20 % slower here than im2col + GEMM, its conv1
# (OW = 26: 32 for 26) 25 % faster
MAX_RECOMPUTED = 0.25
# the largest layers taken (module docstring): from 64 filters (digitcnn's conv2) or 150
# (widecnn's conv1) OpenBLAS runs the GEMM near its peak; 32 (digitcnn's conv1) gained a layer
# 3 µs a sample and cost its model a second forward worker's compile time (2.8 s; now that
# workers call the convolution by address it would cost the direct kernel's, ~1.8 s)
MAX_FILTERS = 20
MAX_TAPS = 256


def applies(w_shape, geo, groups, OW, dtype):
    """True when the direct kernel computes this convolution (module docstring).

    w_shape (F, C // groups, KH, KW); geo (KH, KW, sh, sw, pt, pb, pl, pr, dh, dw) as
    conv._geometry; OW the output width.
    """
    F, C = w_shape[0], w_shape[1]
    KH, KW, sh, sw, pt, pb, pl, pr, dh, dw = geo
    V = lanes(dtype)
    slots = -(-OW // V) * V
    return (not numba.config.DISABLE_JIT and groups == 1 and 1 < KH * KW
            and C * KH * KW <= MAX_TAPS and FILTERS <= F <= MAX_FILTERS
            and (sh, sw, dh, dw) == (1, 1, 1, 1) and (pt, pb, pl, pr) == (0, 0, 0, 0)
            and OW >= V and slots - OW <= MAX_RECOMPUTED * slots)


def _block_type(vector):
    return ir.ArrayType(vector, FILTERS * VECTORS)


def _accumulator(builder, block, i):
    return cgutils.gep_inbounds(builder, block, 0, i)


@intrinsic
def _new_block(typingctx, like):
    """A zeroed block of FILTERS × VECTORS accumulators, dtype of the 1-D array ``like``, on
    the caller's stack (an opaque pointer for ``_tap`` and ``_flush``)."""
    def codegen(context, builder, signature, args):
        return zeroed_block(context, builder, like, FILTERS * VECTORS)

    return types.voidptr(like), codegen


@intrinsic
def _tap(typingctx, block, wf, w_at, w_stride, xf, x0, x1, x2):
    """One tap for the whole block: accumulator (i, j) += wf[w_at + i·w_stride] · xf[xj : xj+V]
    for filters i < FILTERS and vectors j < VECTORS."""
    sig = types.void(block, wf, w_at, w_stride, xf, x0, x1, x2)

    def codegen(context, builder, signature, args):
        block_ptr, w_array, w_at_v, w_stride_v, x_array, *x_at = args
        vector = vector_type(context, xf)
        block_ptr = builder.bitcast(block_ptr, _block_type(vector).as_pointer())
        multiply_add = fmuladd(builder, vector)
        align = VECTOR_BYTES // vector.count  # an element's: the loads are unaligned
        inputs = [builder.load(vector_pointer(context, builder, xf, x_array, at, vector),
                               align=align)
                  for at in x_at]
        for i in range(FILTERS):
            w_index = builder.add(w_at_v, builder.mul(w_stride_v, ir.Constant(w_at_v.type, i)))
            weight = splat(builder, vector, builder.load(
                element_pointer(context, builder, wf, w_array, w_index)))
            for j in range(VECTORS):
                acc = _accumulator(builder, block_ptr, i * VECTORS + j)
                sum_ = builder.call(multiply_add, [weight, inputs[j], builder.load(acc)])
                builder.store(sum_, acc)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _flush(typingctx, block, b, f0, of, P, o0, o1, o2):
    """Write the block out and zero it: of[(f0+i)·P + oj : ... + V] = accumulator (i, j) + b[f0+i]."""
    sig = types.void(block, b, f0, of, P, o0, o1, o2)

    def codegen(context, builder, signature, args):
        block_ptr, b_array, f0_v, out_array, P_v, *o_at = args
        vector = vector_type(context, of)
        block_ptr = builder.bitcast(block_ptr, _block_type(vector).as_pointer())
        for i in range(FILTERS):
            f = builder.add(f0_v, ir.Constant(f0_v.type, i))
            bias = splat(builder, vector, builder.load(
                element_pointer(context, builder, b, b_array, f)))
            for j in range(VECTORS):
                acc = _accumulator(builder, block_ptr, i * VECTORS + j)
                at = builder.add(builder.mul(f, P_v), o_at[j])
                out = vector_pointer(context, builder, of, out_array, at, vector)
                builder.store(builder.fadd(builder.load(acc), bias), out,
                              align=VECTOR_BYTES // vector.count)
                builder.store(ir.Constant(vector, None), acc)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True)
def _vector_at(j, per_row, OW, V):
    """(oh, ow) of output vector j: row j // per_row, the last vector of a row ending at OW."""
    oh = j // per_row
    return oh, min((j - oh * per_row) * V, OW - V)


@njit(cache=True)
def conv_direct_sample(x, n, w2, b, conv2, KH, KW, OH, OW):
    """conv2 (F, OH·OW) = conv(x[n]) + b, for a layer where ``applies`` holds.

    x (N, C, H, W); w2 (F, C·KH·KW); b (F,) (zeros for a layer without bias); all C-contiguous.
    """
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    F, R = w2.shape
    P = OH * OW
    xf = x[n].reshape(C * H * W)
    wf = w2.reshape(F * R)
    of = conv2.reshape(F * P)
    V = VECTOR_BYTES // xf.itemsize
    per_row = (OW + V - 1) // V
    n_vectors = OH * per_row
    block = _new_block(xf)
    for f_start in range(0, F, FILTERS):
        f0 = min(f_start, F - FILTERS)
        # VECTORS (3) vectors a block; a short last group repeats its last vector
        for j in range(0, n_vectors, VECTORS):
            oh0, ow0 = _vector_at(j, per_row, OW, V)
            oh1, ow1 = _vector_at(min(j + 1, n_vectors - 1), per_row, OW, V)
            oh2, ow2 = _vector_at(min(j + 2, n_vectors - 1), per_row, OW, V)
            r = 0
            for c in range(C):
                for kh in range(KH):
                    for kw in range(KW):
                        shift = (c * H + kh) * W + kw
                        _tap(block, wf, f0 * R + r, R, xf, oh0 * W + ow0 + shift,
                             oh1 * W + ow1 + shift, oh2 * W + ow2 + shift)
                        r += 1
            _flush(block, b, f0, of, P, oh0 * OW + ow0, oh1 * OW + ow1, oh2 * OW + ow2)


def _argument_types(dtype):
    """conv_direct_sample's argument types for arrays of ``dtype`` (all C-contiguous)."""
    dt = numba.from_dtype(np.dtype(dtype))
    return (types.Array(dt, 4, "C"), types.int64, types.Array(dt, 2, "C"),
            types.Array(dt, 1, "C"), types.Array(dt, 2, "C")) + (types.int64,) * 4


def address(dtype):
    """Address of conv_direct_sample compiled for ``dtype`` (compiled, or loaded from the disk
    cache, on first use), for ``call``. 0 in precompile's helper process, which runs nothing
    (an int all the same: the forward tuple's types are those of the real step)."""
    return fixed_address(conv_direct_sample, dtype, _argument_types)


def call(at, args):
    """conv_direct_sample(*args), compiled at address ``at`` (``address``). Compiled code only:
    with the JIT off ``applies`` is False and the direct path is never taken."""
    raise NotImplementedError("direct_conv.call runs in compiled code only")


@overload(call, jit_options={"cache": True})
def _call_nopython(at, args):
    # args: (x, n, w2, b, conv2, KH, KW, OH, OW) with exactly the types the address was
    # compiled for (a call through an address has no dispatcher to check them)
    if not isinstance(args, types.BaseTuple) or not isinstance(args.types[0], types.Array):
        raise TypingError("direct_conv.call: args must be conv_direct_sample's argument tuple")
    argtypes = _argument_types(np.dtype(str(args.types[0].dtype)))
    if tuple(args.types) != argtypes:
        raise TypingError(f"direct_conv.call: argument types {args.types}, expected {argtypes}")

    def impl(at, args):
        call_fixed(at, args)
    return impl
