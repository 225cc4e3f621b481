"""Direct stride-1 convolution of few filters (numpy twin: numpy_backend/conv.py).

    out[f, oh·OW + ow] = b[f] + Σ_r w2[f, r] · xs[c, oh + kh, ow + kw]
                                                           r = (c·KH + kh)·KW + kw

for one sample xs (C, H, W), unpadded. A block of FILTERS (4) filters × VECTORS (3) output
vectors, each V consecutive outputs of one row (8 float32 or 4 float64 in a 256-bit register),
sums over every tap in 12 registers: per tap 3 unaligned input loads, 4 broadcast weights and
12 multiply-adds, written once at the end. Filters that do not divide F end with a block that
overlaps the one before, a row's last vector ends at OW and a short last group repeats its last
vector: each recomputes the same values with the same arithmetic, so every output is written
with one value. conv.py runs it per sample where :func:`applies` holds (lenet's two
convolutions: a GEMM with 10 or 20 rows, for which im2col costs about as much as the product),
keeping its own epilogue and backward pass around it.

Sums run over the taps in order, each step one fused multiply-add: within float rounding of
the GEMM, not bitwise.
"""
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ..common import tap_offsets
from . import enabled
from .vectors import (VECTOR_BYTES, block_vectors, element_and_vector, fmuladd, has_vector_fma,
                      lanes, new_block_intrinsic, pointer, slot, splat, vector_pointer)

__all__ = ["applies", "forward_sample"]

FILTERS = 4  # filters per block
VECTORS = 3  # output vectors per block: 12 accumulators + 3 inputs + 1 weight = 16 registers
# the most of a row's vector slots that may recompute outputs of the vector before
MAX_RECOMPUTED = 0.25
# from 64 filters or a few hundred taps, the GEMM runs near its peak and im2col is cheap beside it
MAX_FILTERS = 20
MAX_TAPS = 256


def applies(g, dtype):
    """True when this kernel runs the forward pass of the convolution of Geometry g (conv.py)
    in ``dtype``: stride 1, no padding or dilation, one group, a kernel larger than 1×1,
    FILTERS to MAX_FILTERS filters, at most MAX_TAPS taps, rows that fill vectors with at most
    MAX_RECOMPUTED of their slots recomputed, and AVX2."""
    V = lanes(dtype, VECTOR_BYTES)
    slots = -(-g.OW // V) * V
    return (g.G == 1 and (g.sh, g.sw, g.dh, g.dw) == (1, 1, 1, 1) and g.KH * g.KW > 1
            and g.C * g.KH * g.KW <= MAX_TAPS and FILTERS <= g.F <= MAX_FILTERS
            and (g.top, g.left) == (0, 0) and (g.OH, g.OW) == (g.H - g.KH + 1, g.W - g.KW + 1)
            and g.OW >= V and slots - g.OW <= MAX_RECOMPUTED * slots
            and enabled() and has_vector_fma())


# a zeroed block of FILTERS × VECTORS accumulators
_new_block = new_block_intrinsic(VECTOR_BYTES, FILTERS * VECTORS)


@intrinsic
def _tap(typingctx, block, like, w_address, w_at, w_stride, x_address, x0, x1, x2):
    """acc[i, j] += w[w_at + i·w_stride] · x[xj : xj + V] for i < FILTERS, j < VECTORS."""
    sig = types.void(block, like, w_address, w_at, w_stride, x_address, x0, x1, x2)

    def codegen(context, builder, signature, args):
        block_ptr, _, w_addr, w_at_v, w_stride_v, x_addr, *x_at = args
        element, vector = element_and_vector(context, like, VECTOR_BYTES)
        acc_block = block_vectors(builder, block_ptr, vector, FILTERS * VECTORS)
        fma = fmuladd(builder, vector)
        align = VECTOR_BYTES // vector.count  # one element's: the loads are unaligned
        inputs = [builder.load(vector_pointer(builder, x_addr, element, at, vector), align=align)
                  for at in x_at]
        for i in range(FILTERS):
            at = builder.add(w_at_v, builder.mul(w_stride_v, ir.Constant(w_at_v.type, i)))
            weight = splat(builder, vector, builder.load(pointer(builder, w_addr, element, at)))
            for j in range(VECTORS):
                acc = slot(builder, acc_block, i * VECTORS + j)
                builder.store(builder.call(fma, [weight, inputs[j], builder.load(acc)]), acc)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _flush(typingctx, block, like, b_address, f0, out_address, plane, o0, o1, o2):
    """out[(f0 + i)·plane + oj : ... + V] = acc[i, j] + b[f0 + i], then zero the block."""
    sig = types.void(block, like, b_address, f0, out_address, plane, o0, o1, o2)

    def codegen(context, builder, signature, args):
        block_ptr, _, b_addr, f0_v, out_addr, plane_v, *o_at = args
        element, vector = element_and_vector(context, like, VECTOR_BYTES)
        acc_block = block_vectors(builder, block_ptr, vector, FILTERS * VECTORS)
        align = VECTOR_BYTES // vector.count
        for i in range(FILTERS):
            f = builder.add(f0_v, ir.Constant(f0_v.type, i))
            bias = splat(builder, vector, builder.load(pointer(builder, b_addr, element, f)))
            for j in range(VECTORS):
                acc = slot(builder, acc_block, i * VECTORS + j)
                at = builder.add(builder.mul(f, plane_v), o_at[j])
                builder.store(builder.fadd(builder.load(acc), bias),
                              vector_pointer(builder, out_addr, element, at, vector), align=align)
                builder.store(ir.Constant(vector, None), acc)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True)
def _vector_at(j, per_row, OW, V):
    """(oh, ow) of output vector j: row j // per_row, the last vector of a row ending at OW."""
    oh = j // per_row
    return oh, min((j - oh * per_row) * V, OW - V)


@njit(cache=True)
def forward_sample(xs, w2, b, out, KH, KW, OH, OW):
    """out (F, OH·OW) = conv(xs) + b. xs (C, H, W) one sample; w2 (F, C·KH·KW); b (F,); all
    C-contiguous."""
    C, H, W = xs.shape
    F, R = w2.shape
    P = OH * OW
    V = VECTOR_BYTES // xs.itemsize
    if (R != C * KH * KW or F < FILTERS or OW < V or OH + KH - 1 > H or OW + KW - 1 > W
            or out.shape[0] != F or out.shape[1] != P or b.shape[0] != F):
        raise ValueError("conv2d forward: the direct kernel got operands of the wrong sizes")
    per_row = (OW + V - 1) // V
    n_vectors = OH * per_row
    # one flat loop over the taps, each tap's offset from a table: loops over (c, kh, kw) ran
    # slower where a caller's module optimised this kernel a second time (the copy of it that
    # Numba links into each caller and caches there)
    shifts = tap_offsets(C, H, W, KH, KW)
    x_at, w_at, b_at, out_at = xs.ctypes.data, w2.ctypes.data, b.ctypes.data, out.ctypes.data
    block = _new_block(xs)
    for f_start in range(0, F, FILTERS):
        f0 = min(f_start, F - FILTERS)
        for j in range(0, n_vectors, VECTORS):
            oh0, ow0 = _vector_at(j, per_row, OW, V)
            oh1, ow1 = _vector_at(min(j + 1, n_vectors - 1), per_row, OW, V)
            oh2, ow2 = _vector_at(min(j + 2, n_vectors - 1), per_row, OW, V)
            at0, at1, at2 = oh0 * W + ow0, oh1 * W + ow1, oh2 * W + ow2
            for r in range(R):
                shift = shifts[r]
                _tap(block, xs, w_at, f0 * R + r, R, x_at, at0 + shift, at1 + shift, at2 + shift)
            _flush(block, xs, b_at, f0, out_at, P, oh0 * OW + ow0, oh1 * OW + ow1,
                   oh2 * OW + ow2)
