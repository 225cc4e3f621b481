"""Stride-1 convolution with the filters along wide vectors (numpy twin: numpy_backend/conv.py).

    out[f, p]  = b[f] + Σ_r wt[r, f] · xs[c, oh + kh, ow + kw]      p = oh·OW + ow
    dwT[r, f] += Σ_p xs[c, oh + kh, ow + kw] · doutT[p, f]          r = (c·KH + kh)·KW + kw

for one sample xs (C, Hp, Wp), already zero-padded when the layer pads. Both are loops around
register_block.py's block of rb.ROWS × rb.VECTORS wide accumulators: forward, 6 output
pixels × 64 float32 filters (32 float64) summed over every tap, each tap's filters one
contiguous row of the transposed weights wt (taps, F) and each pixel's input a broadcast scalar
read anywhere in the sample, so no column matrix is built and no lane is wasted whatever OW
is; weight gradient, the same block with the roles turned, 6 taps × the filters summed over
every pixel of doutT (P, F), the output gradient transposed. conv.py runs these per sample
where :func:`applies` holds, and keeps its own epilogue (ReLU, pooling) and input gradient
around them.

Sums run over taps (forward) or pixels (weight gradient) in order, each step one fused
multiply-add: within float rounding of the GEMM, not bitwise.
"""
import numpy as np
from numba import njit

from ..common import tap_offsets
from . import register_block as rb
from . import wide_enabled
from .vectors import WIDE_VECTOR_BYTES

__all__ = ["applies", "padded_size", "forward_sample", "weight_grad_sample", "pad_sample",
           "transpose_plane"]

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
            and g.F > 0 and g.F % rb.columns(dtype) == 0 and g.OH > 0 and g.OW > 0
            and g.F * g.C * g.KH * g.KW * itemsize <= MAX_WEIGHT_BYTES
            and g.top >= 0 and g.left >= 0 and g.top + g.H <= Hp and g.left + g.W <= Wp
            and wide_enabled())


@njit(cache=True, inline="always")
def _fits(xs, R, F, KH, KW, OH, OW):
    """True when xs (C, Hp, Wp) and an (R, F) operand fit these sizes: the intrinsics read by
    address, unchecked."""
    C, Hp, Wp = xs.shape
    block = rb.VECTORS * WIDE_VECTOR_BYTES // xs.itemsize
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
    block_filters = rb.VECTORS * WIDE_VECTOR_BYTES // xs.itemsize
    # one flat loop over the taps, each tap's offset from a table: written as loops over
    # (c, kh, kw), LLVM keeps the pixels' addresses in spilled registers
    shifts = tap_offsets(xs.shape[0], xs.shape[1], Wp, KH, KW)
    bases = np.empty(rb.ROWS, np.int64)  # each pixel's first input, xs[0, oh, ow]
    pixels = np.empty(rb.ROWS, np.int64)
    x_at, w_at, b_at, out_at = xs.ctypes.data, wt.ctypes.data, b.ctypes.data, out.ctypes.data
    bases_at, pixels_at = bases.ctypes.data, pixels.ctypes.data
    block = rb.new_block(xs)
    for f0 in range(0, F, block_filters):
        for p0 in range(0, P, rb.ROWS):
            for i in range(rb.ROWS):
                # a short last block repeats the last pixel, which stores the same value again
                p = min(p0 + i, P - 1)
                oh = p // OW
                pixels[i] = p
                bases[i] = oh * Wp + (p - oh * OW)
            for r in range(R):
                rb.multiply_add(block, xs, w_at, r * F + f0, x_at, bases_at, shifts[r])
            rb.store_transposed(block, xs, b_at, f0, out_at, P, pixels_at)


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
    block_filters = rb.VECTORS * WIDE_VECTOR_BYTES // xs.itemsize
    taps = tap_offsets(xs.shape[0], xs.shape[1], Wp, KH, KW)
    bases = np.empty(P, np.int64)  # a flat loop over the pixels, as forward_sample's taps
    for p in range(P):
        oh = p // OW
        bases[p] = oh * Wp + (p - oh * OW)
    shifts = np.empty(rb.ROWS, np.int64)  # the block's taps' offsets
    x_at, d_at, dw_at, shifts_at = xs.ctypes.data, doutT.ctypes.data, dwT.ctypes.data, \
        shifts.ctypes.data
    block = rb.new_block(xs)
    for f0 in range(0, F, block_filters):
        for r0 in range(0, R, rb.ROWS):
            for i in range(rb.ROWS):
                # a short last block repeats a tap, added only once (add_rows' count)
                shifts[i] = taps[min(r0 + i, R - 1)]
            for p in range(P):
                rb.multiply_add(block, xs, d_at, p * F + f0, x_at, shifts_at, bases[p])
            rb.add_rows(block, xs, dw_at, F, f0, r0, min(rb.ROWS, R - r0))


@njit(cache=True, inline="always")
def pad_sample(x, n, top, left, xp):
    """xp[:, top:top + H, left:left + W] = x[n] (C, H, W). The border of xp (C, Hp, Wp) is not
    written: callers allocate it zeroed and hold only such copies there."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    for c in range(C):
        for i in range(H):
            for j in range(W):
                xp[c, top + i, left + j] = x[n, c, i, j]


@njit(cache=True, inline="always")
def transpose_plane(a, aT):
    """aT (P, F) = a (F, P)ᵀ, in tiles of 16 × 16."""
    F, P = a.shape
    for f0 in range(0, F, 16):
        for p0 in range(0, P, 16):
            for f in range(f0, min(F, f0 + 16)):
                for p in range(p0, min(P, p0 + 16)):
                    aT[p, f] = a[f, p]
