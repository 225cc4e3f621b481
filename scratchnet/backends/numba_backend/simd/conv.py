"""Stride-1 convolution with the filters along wide vectors (numpy twin: numpy_backend/conv.py).

    out[f, p]  = b[f] + Σ_r wt[r, f] · xs[c, oh + kh, ow + kw]      p = oh·OW + ow
    dwT[r, f] += Σ_p xs[c, oh + kh, ow + kw] · doutT[p, f]          r = (c·KH + kh)·KW + kw

for one sample xs (C, Hp, Wp), already zero-padded when the layer pads. Both are loops around
a block of ROWS × VECTORS wide accumulators (register_block.py's scheme): forward, 6 output
pixels × 64 float32 filters (32 float64) summed over every tap, each tap's filters one
contiguous row of the transposed weights wt (taps, F) and each pixel's input a broadcast scalar
read anywhere in the sample, so no column matrix is built and no lane is wasted whatever OW
is; weight gradient, the same block with the roles turned, 6 taps × the filters summed over
every pixel of doutT (P, F), the output gradient transposed. conv.py runs these per sample
where :func:`applies` holds, and keeps its own epilogue (ReLU, pooling) and input gradient
around them.

Why 6 rows and not register_block's 7: a called njit function's code is optimised again
inside each caller, and in conv.py's span kernels LLVM unrolled the 7-row loop and spilled
its 28 accumulators to the stack on every step (the broadcast scalar makes 33 live vectors);
24 accumulators leave room, and one 512-bit FMA per cycle keeps either block busy.

Sums run over taps (forward) or pixels (weight gradient) in order, each step one fused
multiply-add: within float rounding of the GEMM, not bitwise.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from . import wide_enabled
from .vectors import (WIDE_VECTOR_BYTES, block_vectors, fmuladd, pointer, splat, stack_block,
                      vector_of, vector_pointer)

__all__ = ["applies", "padded_size", "forward_sample", "weight_grad_sample", "pad_sample",
           "transpose_plane"]

ROWS = 6  # pixels (forward) or taps (weight gradient) per block
VECTORS = 4  # wide vectors of filters per block


def _columns(dtype):
    """Filters per block: VECTORS wide vectors (64 float32, 32 float64)."""
    return VECTORS * WIDE_VECTOR_BYTES // np.dtype(dtype).itemsize


def _types(context, like):
    element = context.get_value_type(like.dtype)
    return element, vector_of(element, WIDE_VECTOR_BYTES)


def _accumulator(builder, block, i, j):
    i32 = ir.IntType(32)
    return builder.gep(block, [ir.Constant(i32, 0), ir.Constant(i32, i * VECTORS + j)],
                       inbounds=True)


@intrinsic
def _new_block(typingctx, like):
    """A zeroed block for arrays of like's dtype (register_block.new_block)."""
    def codegen(context, builder, signature, args):
        _, vector = _types(context, like)
        return stack_block(builder, vector, ROWS * VECTORS)

    return types.voidptr(like), codegen


@intrinsic
def _multiply_add(typingctx, block, like, v_address, v_at, s_address, s_index_address, s_add):
    """acc[i, j] += s[s_index[i] + s_add] · v[v_at + j·V : v_at + (j+1)·V] for i < ROWS
    (register_block.multiply_add)."""
    sig = types.void(block, like, v_address, v_at, s_address, s_index_address, s_add)

    def codegen(context, builder, signature, args):
        block_ptr, _, v_addr, v_at_v, s_addr, s_index_addr, s_add_v = args
        element, vector = _types(context, like)
        acc_block = block_vectors(builder, block_ptr, vector, ROWS * VECTORS)
        fma = fmuladd(builder, vector)
        align = WIDE_VECTOR_BYTES // vector.count
        loaded = []
        for j in range(VECTORS):
            at = builder.add(v_at_v, ir.Constant(v_at_v.type, j * vector.count))
            loaded.append(builder.load(vector_pointer(builder, v_addr, element, at, vector),
                                       align=align))
        i64 = ir.IntType(64)
        for i in range(ROWS):
            offset = builder.load(pointer(builder, s_index_addr, i64, ir.Constant(i64, i)))
            scalar = builder.load(pointer(builder, s_addr, element, builder.add(offset, s_add_v)))
            broadcast = splat(builder, vector, scalar)
            for j in range(VECTORS):
                acc = _accumulator(builder, acc_block, i, j)
                builder.store(builder.call(fma, [broadcast, loaded[j], builder.load(acc)]), acc)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _add_rows(typingctx, block, like, out_address, row_length, col0, row0, count):
    """out[(row0 + i)·row_length + col0 + j·V : ... + V] += acc[i, j] for i < count, then zero
    the block (register_block.add_rows)."""
    sig = types.void(block, like, out_address, row_length, col0, row0, count)

    def codegen(context, builder, signature, args):
        block_ptr, _, out_addr, length_v, col0_v, row0_v, count_v = args
        element, vector = _types(context, like)
        acc_block = block_vectors(builder, block_ptr, vector, ROWS * VECTORS)
        index = col0_v.type
        align = WIDE_VECTOR_BYTES // vector.count
        for i in range(ROWS):
            row = builder.add(row0_v, ir.Constant(index, i))
            inside = builder.icmp_signed("<", ir.Constant(index, i), count_v)
            with builder.if_then(inside, likely=True):
                for j in range(VECTORS):
                    acc = _accumulator(builder, acc_block, i, j)
                    at = builder.add(builder.add(builder.mul(row, length_v), col0_v),
                                     ir.Constant(index, j * vector.count))
                    out = vector_pointer(builder, out_addr, element, at, vector)
                    builder.store(builder.fadd(builder.load(out, align=align), builder.load(acc)),
                                  out, align=align)
            for j in range(VECTORS):
                builder.store(ir.Constant(vector, None), _accumulator(builder, acc_block, i, j))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _store_transposed(typingctx, block, like, bias_address, col0, out_address, plane,
                      row_index_address):
    """out[(col0 + c)·plane + row_index[i]] = acc[i, c] + bias[col0 + c], then zero the block
    (register_block.store_transposed)."""
    sig = types.void(block, like, bias_address, col0, out_address, plane, row_index_address)

    def codegen(context, builder, signature, args):
        block_ptr, _, bias_addr, col0_v, out_addr, plane_v, rows_addr = args
        element, vector = _types(context, like)
        acc_block = block_vectors(builder, block_ptr, vector, ROWS * VECTORS)
        index = col0_v.type
        i64 = ir.IntType(64)
        align = WIDE_VECTOR_BYTES // vector.count
        biases = []
        for j in range(VECTORS):
            at = builder.add(col0_v, ir.Constant(index, j * vector.count))
            biases.append(builder.load(vector_pointer(builder, bias_addr, element, at, vector),
                                       align=align))
        for i in range(ROWS):
            row = builder.load(pointer(builder, rows_addr, i64, ir.Constant(i64, i)))
            for j in range(VECTORS):
                acc = _accumulator(builder, acc_block, i, j)
                values = builder.fadd(builder.load(acc), biases[j])
                for lane in range(vector.count):
                    c = builder.add(col0_v, ir.Constant(index, j * vector.count + lane))
                    at = builder.add(builder.mul(c, plane_v), row)
                    value = builder.extract_element(values, ir.Constant(ir.IntType(32), lane))
                    builder.store(value, pointer(builder, out_addr, element, at))
                builder.store(ir.Constant(vector, None), acc)
        return context.get_dummy_value()

    return sig, codegen


# the transposed weights (taps, F) are read once per block of pixels: they should stay in a
# core's L2
MAX_WEIGHT_BYTES = 1 << 20


def padded_size(g):
    """(Hp, Wp): the zero-padded sample a stride-1 layer's kernels read, OH + KH - 1 rows of
    OW + KW - 1 values (the sample itself when the layer does not pad)."""
    return g.OH + g.KH - 1, g.OW + g.KW - 1


def applies(g, dtype):
    """True when these kernels run the forward pass and weight gradient of the convolution of
    Geometry g (conv.py) in ``dtype``: stride 1, no dilation, one group, a kernel larger than
    1×1, F a whole number of filter blocks, weights under MAX_WEIGHT_BYTES, and AVX-512."""
    itemsize = np.dtype(dtype).itemsize
    Hp, Wp = padded_size(g)
    return (g.G == 1 and (g.sh, g.sw, g.dh, g.dw) == (1, 1, 1, 1) and g.KH * g.KW > 1
            and g.F > 0 and g.F % _columns(dtype) == 0 and g.OH > 0 and g.OW > 0
            and g.F * g.C * g.KH * g.KW * itemsize <= MAX_WEIGHT_BYTES
            and g.top >= 0 and g.left >= 0 and g.top + g.H <= Hp and g.left + g.W <= Wp
            and wide_enabled())


@njit(cache=True)
def _tap_offsets(C, Hp, Wp, KH, KW):
    """(C·KH·KW,) int64: tap r = (c·KH + kh)·KW + kw's offset (c·Hp + kh)·Wp + kw in xs."""
    shifts = np.empty(C * KH * KW, np.int64)
    r = 0
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                shifts[r] = (c * Hp + kh) * Wp + kw
                r += 1
    return shifts


@njit(cache=True)
def _fits(xs, R, F, KH, KW, OH, OW):
    """True when xs (C, Hp, Wp) and an (R, F) operand fit these sizes: the intrinsics read by
    address, unchecked."""
    C, Hp, Wp = xs.shape
    block = VECTORS * WIDE_VECTOR_BYTES // xs.itemsize
    return (R == C * KH * KW and Hp >= OH + KH - 1 and Wp >= OW + KW - 1 and OH > 0 and OW > 0
            and F % block == 0)


@njit(cache=True)
def forward_sample(xs, wt, b, out, KH, KW, OH, OW):
    """out (F, OH·OW) = conv(xs) + b. xs (C, Hp, Wp) one sample, zero-padded when the layer
    pads; wt (C·KH·KW, F) the weights transposed; b (F,); all C-contiguous."""
    R, F = wt.shape
    P = OH * OW
    if (not _fits(xs, R, F, KH, KW, OH, OW) or out.shape[0] != F or out.shape[1] != P
            or b.shape[0] != F):
        raise ValueError("conv2d forward: the filter-vector kernel got operands of the wrong "
                         "sizes")
    Wp = xs.shape[2]
    block_filters = VECTORS * WIDE_VECTOR_BYTES // xs.itemsize
    # one flat loop over the taps, each tap's offset from a table: written as loops over
    # (c, kh, kw), LLVM keeps the pixels' addresses in spilled registers
    shifts = _tap_offsets(xs.shape[0], xs.shape[1], Wp, KH, KW)
    bases = np.empty(ROWS, np.int64)  # each pixel's first input, xs[0, oh, ow]
    pixels = np.empty(ROWS, np.int64)
    x_at, w_at, b_at, out_at = xs.ctypes.data, wt.ctypes.data, b.ctypes.data, out.ctypes.data
    bases_at, pixels_at = bases.ctypes.data, pixels.ctypes.data
    block = _new_block(xs)
    for f0 in range(0, F, block_filters):
        for p0 in range(0, P, ROWS):
            for i in range(ROWS):
                # a short last block repeats the last pixel, which stores the same value again
                p = min(p0 + i, P - 1)
                oh = p // OW
                pixels[i] = p
                bases[i] = oh * Wp + (p - oh * OW)
            for r in range(R):
                _multiply_add(block, xs, w_at, r * F + f0, x_at, bases_at, shifts[r])
            _store_transposed(block, xs, b_at, f0, out_at, P, pixels_at)


@njit(cache=True)
def weight_grad_sample(xs, doutT, dwT, KH, KW, OH, OW):
    """dwT (C·KH·KW, F) += sample xs's weight gradient, transposed. xs (C, Hp, Wp) as for
    forward_sample; doutT (OH·OW, F) the output gradient transposed; all C-contiguous."""
    R, F = dwT.shape
    P = OH * OW
    if not _fits(xs, R, F, KH, KW, OH, OW) or doutT.shape[0] != P or doutT.shape[1] != F:
        raise ValueError("conv2d backward: the filter-vector kernel got operands of the wrong "
                         "sizes")
    Wp = xs.shape[2]
    block_filters = VECTORS * WIDE_VECTOR_BYTES // xs.itemsize
    taps = _tap_offsets(xs.shape[0], xs.shape[1], Wp, KH, KW)
    bases = np.empty(P, np.int64)  # a flat loop over the pixels, as forward_sample's taps
    for p in range(P):
        oh = p // OW
        bases[p] = oh * Wp + (p - oh * OW)
    shifts = np.empty(ROWS, np.int64)  # the block's taps' offsets
    x_at, d_at, dw_at, shifts_at = xs.ctypes.data, doutT.ctypes.data, dwT.ctypes.data, \
        shifts.ctypes.data
    block = _new_block(xs)
    for f0 in range(0, F, block_filters):
        for r0 in range(0, R, ROWS):
            for i in range(ROWS):
                # a short last block repeats a tap, added only once (add_rows' count)
                shifts[i] = taps[min(r0 + i, R - 1)]
            for p in range(P):
                _multiply_add(block, xs, d_at, p * F + f0, x_at, shifts_at, bases[p])
            _add_rows(block, xs, dw_at, F, f0, r0, min(ROWS, R - r0))


@njit(cache=True)
def pad_sample(x, n, top, left, xp):
    """xp[:, top:top + H, left:left + W] = x[n] (C, H, W). The border of xp (C, Hp, Wp) is not
    written: callers allocate it zeroed and hold only such copies there."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    for c in range(C):
        for i in range(H):
            for j in range(W):
                xp[c, top + i, left + j] = x[n, c, i, j]


@njit(cache=True)
def transpose_plane(a, aT):
    """aT (P, F) = a (F, P)ᵀ, in tiles of 16 × 16."""
    F, P = a.shape
    for f0 in range(0, F, 16):
        for p0 in range(0, P, 16):
            for f in range(f0, min(F, f0 + 16)):
                for p in range(p0, min(P, p0 + 16)):
                    aT[p, f] = a[f, p]
