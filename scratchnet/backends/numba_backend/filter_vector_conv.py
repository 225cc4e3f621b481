"""Convolution kernels whose vectors run along the filters, for layers of 64 filters and more.

Which layers (``applies``): stride 1, no dilation, one group, a CPU with AVX-512
(``simd.has_wide_vectors``), F a multiple of ``FILTER_BLOCK`` (64 float32 filters, 32 float64)
and the weights small enough to stay in the core's L2 (``MAX_WEIGHT_BYTES``). In the models:
the 32 → 64, 3×3 second convolution of digitcnn and mitxcnn (88 % of their training FLOPs),
multicnn's 4×4 one and widecnn's padded 150 → 64, 5×5 one (88 % of its). At digitcnn's conv2
im2col + OpenBLAS ran the forward GEMM (M = 64, N = 121, K = 288) at 78-84 GFLOP/s on one core
of a Zen 4, plus the unfold; torch's oneDNN ran the whole layer at 87. This kernel needs no
columns and ran it at 97-104 GFLOP/s. A padded layer's callers copy each sample into a
zero-bordered buffer first (``pad_sample``; conv.py) and run the kernels unpadded on that.

Forward, output (f, p) = Σ_r w[f, r] · x[n, c, oh + kh, ow + kw] + b[f] over the taps
r = (c·KH + kh)·KW + kw in order, p = oh·OW + ow. A block of ``PIXELS`` (7) output pixels ×
``FILTER_BLOCK`` filters (4 wide vectors of 16 float32) sits in 28 of the 32 vector registers
over all taps; per tap: 4 vector loads of the tap's weights (``wt``, the weights transposed to
(taps, F), so that a tap's filters are contiguous), 7 broadcast input values (one per pixel,
anywhere in the image: no column matrix, no wasted lanes whatever OW is), 28 multiply-adds.
The block is written out transposed into the (F, OH·OW) plane the callers pool from, bias
added. A last block of pixels short of 7 repeats the last pixel, which writes the same value
again.

Weight gradient, dwT (taps, F) += Σ_p x[n, c, oh + kh, ow + kw] · dout[f, p]: the same block
with the roles turned, ``PIXELS`` taps × the filter block, accumulated over the sample's pixels
(per pixel: 4 vector loads of doutᵀ's row p, 7 broadcast inputs), then added into the thread's
partial dwT rows (the layout conv.weight_grad_partials already has). It reads doutᵀ (OH·OW, F),
which ``transpose_plane`` writes from the (F, OH·OW) gradient per sample (31 KB, in L1).

Why 512-bit vectors only: the block needs 28 accumulators and 4 weight vectors, which AVX-512's
32 registers hold; AVX2's 16 do not (the 256-bit kernel for lenet's small layers, direct_conv.py,
blocks 12). Sums run over taps (forward) or pixels (weight gradient) in order with
``llvm.fmuladd``: within float rounding of the GEMM, not bitwise; the parity tests hold both
to torch's tolerances. Called by address (``forward_address``, ``weight_grad_address``) like
direct_conv's kernel, and, like it, not taken under ``NUMBA_DISABLE_JIT``.
"""
import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

from .per_thread import call_fixed, fixed_address
from .simd import (WIDE_VECTOR_BYTES, element_pointer, fmuladd, has_wide_vectors, lanes, splat,
                   vector_pointer, vector_type, zeroed_block)

__all__ = ["applies", "filter_block", "forward_address", "weight_grad_address", "call",
           "new_block", "multiply_add", "add_rows",
           "conv_forward_sample", "weight_grad_sample", "transpose_plane", "tap_offsets",
           "pixel_offsets", "pad_sample", "PIXELS", "VECTORS"]

PIXELS = 7  # pixels (forward) or taps (weight gradient) per block
VECTORS = 4  # wide vectors of filters per block: 28 accumulators + 4 loaded vectors = 32 zmm
# a layer's transposed weights (taps, F) are read once per block of pixels, from the core's
# 1 MB L2 (digitcnn's conv2: 72 KB). widecnn's conv2 (3,750 taps, 960 KB, beside its 194 KB
# padded sample) ran at 210 GFLOP/s on one core of a Zen 5 all the same, forward and weight
# gradient alike, against 98 for im2col + OpenBLAS
MAX_WEIGHT_BYTES = 1 << 20


def filter_block(dtype):
    """Filters per block: VECTORS wide vectors (64 float32, 32 float64)."""
    return VECTORS * lanes(dtype, WIDE_VECTOR_BYTES)


def applies(w_shape, geo, groups, dtype):
    """True when these kernels compute this convolution's forward pass and weight gradient
    (module docstring). w_shape (F, C // groups, KH, KW); geo as conv._geometry."""
    F, C, KH, KW = w_shape
    _, _, sh, sw, pt, pb, pl, pr, dh, dw = geo
    return (not numba.config.DISABLE_JIT and has_wide_vectors() and groups == 1
            and KH * KW > 1 and F > 0 and F % filter_block(dtype) == 0
            and F * C * KH * KW * np.dtype(dtype).itemsize <= MAX_WEIGHT_BYTES
            and (sh, sw, dh, dw) == (1, 1, 1, 1) and min(pt, pb, pl, pr) >= 0)


def _wide(context, array_type):
    return vector_type(context, array_type, WIDE_VECTOR_BYTES)


def _block_pointer(builder, block, vector):
    return builder.bitcast(block, ir.ArrayType(vector, PIXELS * VECTORS).as_pointer())


def _accumulator(builder, block, i, j):
    return cgutils.gep_inbounds(builder, block, 0, i * VECTORS + j)


@intrinsic
def new_block(typingctx, like):
    """A zeroed block of PIXELS × VECTORS wide accumulators, dtype of the 1-D array ``like``."""
    def codegen(context, builder, signature, args):
        return zeroed_block(context, builder, like, PIXELS * VECTORS, WIDE_VECTOR_BYTES)

    return types.voidptr(like), codegen


@intrinsic
def multiply_add(typingctx, block, vf, v_at, sf, s_at, s_add):
    """accumulator (i, j) += sf[s_at[i] + s_add] · vf[v_at + j·V : ... + V] for i < PIXELS and
    j < VECTORS: PIXELS broadcast scalars times VECTORS contiguous vectors."""
    sig = types.void(block, vf, v_at, sf, s_at, s_add)

    def codegen(context, builder, signature, args):
        block_ptr, v_array, v_at_v, s_array, s_at_array, s_add_v = args
        vector = _wide(context, vf)
        block_ptr = _block_pointer(builder, block_ptr, vector)
        multiply_add = fmuladd(builder, vector)
        align = WIDE_VECTOR_BYTES // vector.count  # an element's: the loads are unaligned
        loaded = []
        for j in range(VECTORS):
            at = builder.add(v_at_v, ir.Constant(v_at_v.type, j * vector.count))
            loaded.append(builder.load(vector_pointer(context, builder, vf, v_array, at, vector),
                                       align=align))
        for i in range(PIXELS):
            offset = builder.load(element_pointer(context, builder, s_at, s_at_array,
                                                  ir.Constant(s_add_v.type, i)))
            scalar = builder.load(element_pointer(context, builder, sf, s_array,
                                                  builder.add(offset, s_add_v)))
            broadcast = splat(builder, vector, scalar)
            for j in range(VECTORS):
                acc = _accumulator(builder, block_ptr, i, j)
                builder.store(builder.call(multiply_add, [broadcast, loaded[j], builder.load(acc)]),
                              acc)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _store_transposed(typingctx, block, b, f0, of, P, pixels):
    """Write the block out and zero it: of[(f0 + j·V + l)·P + pixels[i]] = accumulator (i, j)
    lane l + b[f0 + j·V + l] (the (F, P) plane, one value per store)."""
    sig = types.void(block, b, f0, of, P, pixels)

    def codegen(context, builder, signature, args):
        block_ptr, b_array, f0_v, out_array, P_v, pixel_array = args
        vector = _wide(context, of)
        block_ptr = _block_pointer(builder, block_ptr, vector)
        index = f0_v.type
        align = WIDE_VECTOR_BYTES // vector.count
        biases = []
        for j in range(VECTORS):
            at = builder.add(f0_v, ir.Constant(index, j * vector.count))
            biases.append(builder.load(vector_pointer(context, builder, b, b_array, at, vector),
                                       align=align))
        for i in range(PIXELS):
            pixel = builder.load(element_pointer(context, builder, pixels, pixel_array,
                                                 ir.Constant(index, i)))
            for j in range(VECTORS):
                acc = _accumulator(builder, block_ptr, i, j)
                values = builder.fadd(builder.load(acc), biases[j])
                for lane in range(vector.count):
                    f = builder.add(f0_v, ir.Constant(index, j * vector.count + lane))
                    at = builder.add(builder.mul(f, P_v), pixel)
                    builder.store(builder.extract_element(values, ir.Constant(ir.IntType(32), lane)),
                                  element_pointer(context, builder, of, out_array, at))
                builder.store(ir.Constant(vector, None), acc)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def add_rows(typingctx, block, of, F, f0, r0, count):
    """Add the block into rows r0 .. r0 + count - 1 of the (R, F) array ``of`` and zero it:
    of[(r0 + i)·F + f0 + j·V : ... + V] += accumulator (i, j) for i < count (<= PIXELS)."""
    sig = types.void(block, of, F, f0, r0, count)

    def codegen(context, builder, signature, args):
        block_ptr, out_array, F_v, f0_v, r0_v, count_v = args
        vector = _wide(context, of)
        block_ptr = _block_pointer(builder, block_ptr, vector)
        index = f0_v.type
        align = WIDE_VECTOR_BYTES // vector.count
        for i in range(PIXELS):
            row = builder.add(r0_v, ir.Constant(index, i))
            inside = builder.icmp_signed("<", ir.Constant(index, i), count_v)
            with builder.if_then(inside, likely=True):
                for j in range(VECTORS):
                    acc = _accumulator(builder, block_ptr, i, j)
                    at = builder.add(builder.add(builder.mul(row, F_v), f0_v),
                                     ir.Constant(index, j * vector.count))
                    out = vector_pointer(context, builder, of, out_array, at, vector)
                    builder.store(builder.fadd(builder.load(out, align=align), builder.load(acc)),
                                  out, align=align)
            for j in range(VECTORS):
                builder.store(ir.Constant(vector, None), _accumulator(builder, block_ptr, i, j))
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True)
def conv_forward_sample(x, n, wt, b, conv2, KH, KW, OH, OW):
    """conv2 (F, OH·OW) = conv(x[n]) + b, for a layer where ``applies`` holds.

    x (N, C, H, W); wt (C·KH·KW, F), the weights transposed; b (F,) (zeros for a layer
    without bias); all C-contiguous.
    """
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    R, F = wt.shape
    P = OH * OW
    xf = x[n].reshape(C * H * W)
    wf = wt.reshape(R * F)
    of = conv2.reshape(F * P)
    block_filters = VECTORS * (WIDE_VECTOR_BYTES // xf.itemsize)
    # one flat loop over the taps, each tap's offset into x[n] from a table: written as
    # loops over (c, kh, kw), LLVM kept the pixels' addresses in spilled registers and
    # shuffled the accumulators between iterations (3.5x slower)
    shifts = tap_offsets(C, H, W, KH, KW)
    bases = np.empty(PIXELS, np.int64)  # each pixel's first input, x[n, 0, oh, ow]
    pixels = np.empty(PIXELS, np.int64)
    block = new_block(xf)
    for f0 in range(0, F, block_filters):
        for p0 in range(0, P, PIXELS):
            for i in range(PIXELS):
                p = min(p0 + i, P - 1)
                oh = p // OW
                pixels[i] = p
                bases[i] = oh * W + (p - oh * OW)
            for r in range(R):
                multiply_add(block, wf, r * F + f0, xf, bases, shifts[r])
            _store_transposed(block, b, f0, of, P, pixels)


@njit(cache=True)
def tap_offsets(C, H, W, KH, KW):
    """(C·KH·KW,) int64: tap r = (c·KH + kh)·KW + kw's offset (c·H + kh)·W + kw into a sample."""
    shifts = np.empty(C * KH * KW, np.int64)
    r = 0
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                shifts[r] = (c * H + kh) * W + kw
                r += 1
    return shifts


@njit(cache=True)
def pixel_offsets(W, OH, OW):
    """(OH·OW,) int64: output pixel p = oh·OW + ow's first input, oh·W + ow, in a sample."""
    bases = np.empty(OH * OW, np.int64)
    for oh in range(OH):
        for ow in range(OW):
            bases[oh * OW + ow] = oh * W + ow
    return bases


@njit(cache=True)
def weight_grad_sample(x, n, doutT, dwT, KH, KW, OH, OW):
    """dwT (C·KH·KW, F) += Σ_p col[r, p] · doutT[p, f]: sample n's weight gradient, transposed,
    for a layer where ``applies`` holds. x (N, C, H, W); doutT (OH·OW, F) the sample's output
    gradient transposed (``transpose_plane``); all C-contiguous."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    R, F = dwT.shape
    xf = x[n].reshape(C * H * W)
    df = doutT.reshape(OH * OW * F)
    wf = dwT.reshape(R * F)
    block_filters = VECTORS * (WIDE_VECTOR_BYTES // xf.itemsize)
    P = OH * OW
    all_shifts = tap_offsets(C, H, W, KH, KW)
    bases = pixel_offsets(W, OH, OW)  # a flat loop over the pixels: see conv_forward_sample
    shifts = np.empty(PIXELS, np.int64)  # the block's taps' offsets into x[n]
    block = new_block(xf)
    for f0 in range(0, F, block_filters):
        for r0 in range(0, R, PIXELS):
            for i in range(PIXELS):
                # a short last block repeats a tap, added only once (add_rows' count)
                shifts[i] = all_shifts[min(r0 + i, R - 1)]
            for p in range(P):
                multiply_add(block, df, p * F + f0, xf, shifts, bases[p])
            add_rows(block, wf, F, f0, r0, min(PIXELS, R - r0))


@njit(cache=True)
def pad_sample(x, n, xp, pt, pl):
    """xp[:, pt:pt + H, pl:pl + W] = x[n] (C, H, W): the sample zero-padded, for a padded layer,
    whose kernels then run unpadded on xp (C, H + pt + pb, W + pl + pr). The border is not
    written: the callers' buffers are allocated zeroed and hold only such copies."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    for c in range(C):
        for i in range(H):
            for j in range(W):
                xp[c, pt + i, pl + j] = x[n, c, i, j]


@njit(cache=True)
def transpose_plane(a, aT):
    """aT (P, F) = a (F, P)ᵀ, in tiles of 16 × 16 (both C-contiguous)."""
    F, P = a.shape
    for f0 in range(0, F, 16):
        for p0 in range(0, P, 16):
            for f in range(f0, min(F, f0 + 16)):
                for p in range(p0, min(P, p0 + 16)):
                    aT[p, f] = a[f, p]


def _forward_types(dtype):
    dt = numba.from_dtype(np.dtype(dtype))
    return (types.Array(dt, 4, "C"), types.int64, types.Array(dt, 2, "C"),
            types.Array(dt, 1, "C"), types.Array(dt, 2, "C")) + (types.int64,) * 4


def _weight_grad_types(dtype):
    dt = numba.from_dtype(np.dtype(dtype))
    return (types.Array(dt, 4, "C"), types.int64, types.Array(dt, 2, "C"),
            types.Array(dt, 2, "C")) + (types.int64,) * 4


def forward_address(dtype):
    """Address of conv_forward_sample for ``dtype``, for ``call`` (as direct_conv.address)."""
    return fixed_address(conv_forward_sample, dtype, _forward_types)


def weight_grad_address(dtype):
    """Address of weight_grad_sample for ``dtype``, for ``call``."""
    return fixed_address(weight_grad_sample, dtype, _weight_grad_types)


def call(at, args):
    """conv_forward_sample(*args) or weight_grad_sample(*args), compiled at address ``at``.
    Compiled code only (``applies`` is False with the JIT off)."""
    raise NotImplementedError("filter_vector_conv.call runs in compiled code only")


@overload(call, jit_options={"cache": True})
def _call_nopython(at, args):
    # a call through an address has no dispatcher to check the types: they must be exactly
    # one of the two kernels' (the tuple's length tells which)
    if not isinstance(args, types.BaseTuple) or not isinstance(args.types[0], types.Array):
        raise TypingError("filter_vector_conv.call: args must be a kernel's argument tuple")
    dtype = np.dtype(str(args.types[0].dtype))
    expected = _forward_types(dtype) if len(args.types) == 9 else _weight_grad_types(dtype)
    if tuple(args.types) != expected:
        raise TypingError(f"filter_vector_conv.call: argument types {args.types}, "
                          f"expected {expected}")

    def impl(at, args):
        call_fixed(at, args)
    return impl
