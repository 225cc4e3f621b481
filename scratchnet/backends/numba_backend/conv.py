"""2-D convolution (numpy twin: numpy_backend/conv.py): im2col and np.dot inside each thread.

    cols[g, (c, kh, kw), (oh, ow)] = x_padded[n, g·Cg + c, oh·sh + kh·dh, ow·sw + kw·dw]
    out[n, f]  = b[f] + Σ_k w[f, k] · cols[g(f), k]                (one GEMM per group)
    dw[f]      = Σ_n dout[n, f] · cols[g(f)]ᵀ
    dcols      = w[g]ᵀ · dout[n, g],   then folded back (col2im) into dx[n]

Each thread takes a contiguous range of samples and, a few samples at a time, unfolds them
side by side into its own columns buffer, runs the GEMMs with ``np.dot`` (single-threaded
BLAS: see common.py) and finishes those samples while they are in cache: bias, ReLU and, for
the fused ops, max pooling (forward), or the pooled/ReLU gradient, the weight-gradient partial
and col2im (backward). Weight and bias gradients are per-thread partials summed at the end.

Where ``simd.conv.applies`` (stride 1, one group, whole blocks of 64 filters, AVX-512), its
kernels replace the unfold and the GEMM of the forward pass and of the weight gradient, one
sample at a time (``Plan.vector``); where ``simd.direct_conv.applies`` (stride 1, unpadded,
4-20 filters, AVX2), its kernel replaces those of the forward pass (``Plan.direct``). The
epilogue and the input gradient stay the same. Where ``simd.linear.products_apply`` (AVX-512,
a plane of at least a row block of positions), simd/linear.py's register-block kernels run the
backward pass's products that remain instead of BLAS (``Plan.products``): the weight gradient
cols·dyᵀ and the input gradient's columns wᵀ·dy.

The direct kernel has its own span and driver (a called njit function is compiled again inside
each caller: a model whose layers never take it does not compile it); the filter-vector
kernels share the GEMM path's, whose epilogue and gradient code they would otherwise compile a
second time.
"""
from collections import namedtuple

import numpy as np
from numba import njit, prange

from ..shapes import conv_output_size
from . import pool
from .common import chunks_for, run_split, scratch_arrays
from .simd import conv as simd_conv
from .simd import direct_conv as simd_direct
from .simd import linear as simd_linear

__all__ = ["conv2d_forward", "conv2d_backward"]

Geometry = namedtuple("Geometry", "N C H W F G Cg Fg KH KW sh sw top left dh dw OH OW")
Geometry.__doc__ = "Every size of one convolution (built by :func:`geometry`), read by name."

# one thread's buffers, for m samples at a time: columns and their gradient (flat, G·K·m·P
# values: K = Cg·KH·KW taps, P = OH·OW positions), the conv output or its gradient (flat,
# F·m·P), one sample's conv output before pooling (F, OH, OW), one group's weight-gradient
# product (K, Fg), and the thread's partial sums of dw transposed (G, K, Fg) and db (F,); for
# the vector kernels, one sample zero-padded (flat, C·Hp·Wp, where the layer pads) and one
# sample's output gradient transposed (flat, P·F). dw is summed transposed as cols·dyᵀ: the
# product's long side is then its rows, which OpenBLAS runs faster at these shapes.
Scratch = namedtuple("Scratch", "cols dcols dy conv product dwT db padded doutT")

Plan = namedtuple("Plan", "threads m vector direct products")
Plan.__doc__ = ("How a pass runs: threads, samples per GEMM (m), whether simd.conv's kernels "
                "compute the forward pass and the weight gradient (``vector``), whether "
                "simd.direct_conv's computes the forward pass (``direct``), and whether "
                "simd.linear's kernels run the backward pass's im2col products instead of "
                "BLAS (``products``).")

# a thread's columns and product for one GEMM stay under this many bytes (several samples
# when they fit)
BLOCK_BYTES = 512 << 10

U = np.uint64  # an unsigned index: no negative-index wrapping in the copy loops

# the fused pool's winners (a position in one OH·OW plane): half int64's memory traffic
POOL_INDEX = np.int32

# a stand-in pooling window for the unpooled ops (never read)
NO_POOL = pool.Window(1, 1, 1, 1, 0, 0, 1, 1)


def geometry(x_shape, w_shape, stride, padding, dilation, groups):
    """The Geometry of conv2d(x, w) with torch's stride, (t, b, l, r) padding and dilation."""
    N, C, H, W = x_shape
    F, Cg, KH, KW = w_shape
    top, bottom, left, right = padding
    OH = conv_output_size(H, top, bottom, KH, stride[0], dilation[0])
    OW = conv_output_size(W, left, right, KW, stride[1], dilation[1])
    return Geometry(N, C, H, W, F, groups, Cg, F // groups, KH, KW, stride[0], stride[1],
                    top, left, dilation[0], dilation[1], OH, OW)


@njit(cache=True, inline="always")
def _inside(offset, stride, size, n_out):
    """The range [lo, hi) of outputs o whose tap ``o·stride + offset`` lies in [0, size)."""
    lo = 0 if offset >= 0 else (stride - 1 - offset) // stride
    hi = 0 if size <= offset else (size - offset + stride - 1) // stride
    lo = min(lo, n_out)
    return lo, max(lo, min(hi, n_out))


@njit(cache=True, inline="always")
def _unpadded(g):
    """True when every tap of Geometry g reads inside the image at horizontal stride 1: each
    column row is then plain copies of OW contiguous values, which unfold_sample takes without
    the padding's range checks (which dominate short rows). fold_sample, its adjoint, keeps
    one loop: the same special case there cost more compile time than it saved."""
    return (g.sw == 1 and g.top == 0 and g.left == 0
            and (g.OH - 1) * g.sh + (g.KH - 1) * g.dh < g.H and g.OW + (g.KW - 1) * g.dw <= g.W)


@njit(cache=True)
def unfold_sample(x, g, n, cols, at0):
    """Sample n of x (N, C, H, W) into columns [at0, at0 + OH·OW) of cols (G, Cg·KH·KW, ·);
    padding taps are 0.

    Flat offsets into x[n] and cols[grp] rather than a view per row: the rows are short (OW),
    and a view per row cost more than its copy."""
    src = x[n].reshape(-1)
    width = cols.shape[2]
    if _unpadded(g):
        for c in range(g.C):
            grp = c // g.Cg
            row = (c - grp * g.Cg) * g.KH * g.KW * width + at0
            dst = cols[grp].reshape(-1)
            for kh in range(g.KH):
                for kw in range(g.KW):
                    for oh in range(g.OH):
                        s0 = (c * g.H + oh * g.sh + kh * g.dh) * g.W + kw * g.dw
                        for ow in range(g.OW):
                            dst[U(row + oh * g.OW + ow)] = src[U(s0 + ow)]
                    row += width
        return
    for c in range(g.C):
        grp = c // g.Cg
        k0 = (c - grp * g.Cg) * g.KH * g.KW
        dst = cols[grp].reshape(-1)
        for kh in range(g.KH):
            for kw in range(g.KW):
                row = (k0 + kh * g.KW + kw) * width + at0
                offset = kw * g.dw - g.left
                ow0, ow1 = _inside(offset, g.sw, g.W, g.OW)
                for oh in range(g.OH):
                    h = oh * g.sh - g.top + kh * g.dh
                    at = row + oh * g.OW
                    lo, hi = (ow0, ow1) if 0 <= h < g.H else (g.OW, g.OW)
                    s0 = (c * g.H + min(max(h, 0), g.H - 1)) * g.W + offset
                    # unsigned indices: no negative-index wrapping, so the copy vectorises
                    for ow in range(lo):
                        dst[U(at + ow)] = 0
                    if g.sw == 1:
                        for ow in range(lo, hi):
                            dst[U(at + ow)] = src[U(s0 + ow)]
                    else:
                        for ow in range(lo, hi):
                            dst[U(at + ow)] = src[U(s0 + ow * g.sw)]
                    for ow in range(hi, g.OW):
                        dst[U(at + ow)] = 0


@njit(cache=True, inline="always")
def fold_sample(dcols, g, n, dx, at0):
    """Add columns [at0, at0 + OH·OW) of dcols (G, Cg·KH·KW, ·) onto sample n of dx
    (N, C, H, W): unfold_sample's adjoint (flat offsets likewise)."""
    dst = dx[n].reshape(-1)
    width = dcols.shape[2]
    for c in range(g.C):
        grp = c // g.Cg
        k0 = (c - grp * g.Cg) * g.KH * g.KW
        src = dcols[grp].reshape(-1)
        for kh in range(g.KH):
            for kw in range(g.KW):
                row = (k0 + kh * g.KW + kw) * width + at0
                offset = kw * g.dw - g.left
                ow0, ow1 = _inside(offset, g.sw, g.W, g.OW)
                for oh in range(g.OH):
                    h = oh * g.sh - g.top + kh * g.dh
                    if 0 <= h < g.H:
                        at = row + oh * g.OW
                        d0 = (c * g.H + h) * g.W + offset
                        if g.sw == 1:
                            for ow in range(ow0, ow1):
                                dst[U(d0 + ow)] += src[U(at + ow)]
                        else:
                            for ow in range(ow0, ow1):
                                dst[U(d0 + ow * g.sw)] += src[U(at + ow)]


@njit(cache=True, inline="always")
def _vector_sample(x, g, n, padded):
    """Sample n of x (N, C, H, W) as simd.conv's kernels read it, (C, Hp, Wp): x[n] itself, or
    copied into ``padded`` (flat, zero border) when the layer pads."""
    if padded.shape[0] == 0:
        return x[n]
    xp = padded.reshape(g.C, g.OH + g.KH - 1, g.OW + g.KW - 1)
    simd_conv.pad_sample(x, n, g.top, g.left, xp)
    return xp


@njit(cache=True, inline="always")
def _finish_samples(y, b, g, add_bias, relu, win, out, index, s, n0, count):
    """Samples n0 .. n0 + count - 1 of the conv output y (F, count·OH·OW): (+ b) (+ ReLU) into
    out (N, F, OH, OW), or with ``index`` non-empty max-pooled by ``win`` into out
    (N, F, PH, PW) and index (N, F, PH, PW).

    Pooled, the ReLU is applied to the pooled values (ReLU and max commute exactly): a quarter
    of the work under a 2×2 pool, and a single sample's y is pooled where it lies."""
    P = g.OH * g.OW
    pooled = index.shape[0] > 0
    for i in range(count):
        if pooled and count == 1:
            plane = y.reshape(g.F, g.OH, g.OW)
            if add_bias:
                for f in range(g.F):
                    for p in range(P):
                        y[f, p] += b[f]
        else:
            plane = s.conv if pooled else out[n0 + i]
            d2 = plane.reshape(g.F, P)
            for f in range(g.F):
                bias = b[f]
                for p in range(P):
                    v = y[f, i * P + p]
                    if add_bias:
                        v = v + bias
                    # `v < 0`, not `v > 0`, so NaN passes through as torch's clamp_min does
                    if relu and not pooled and v < 0:
                        d2[f, p] = 0
                    else:
                        d2[f, p] = v
        if pooled:
            pool.forward_span(plane, win, out[n0 + i], index[n0 + i], 0, g.F)
            if relu:
                o = out[n0 + i].reshape(-1)
                for q in range(o.size):
                    if o[q] < 0:
                        o[q] = 0


@njit(cache=True)
def _forward_span(x, w, b, g, has_bias, relu, win, plan, out, index, s, lo, hi):
    """Samples [lo, hi), plan.m at a time, by im2col and GEMM, or with ``plan.vector`` one at a
    time by simd.conv's kernel (bias added there); finished by _finish_samples.

    w (G, Fg, Cg·KH·KW), or with ``plan.vector`` the weights transposed (1, Cg·KH·KW, F);
    s: this thread's Scratch.
    """
    P, K = g.OH * g.OW, g.Cg * g.KH * g.KW
    for n0 in range(lo, hi, plan.m):
        count = min(n0 + plan.m, hi) - n0
        width = count * P
        y = s.dy[:g.F * width].reshape(g.F, width)
        if plan.vector:  # m is 1
            simd_conv.forward_sample(_vector_sample(x, g, n0, s.padded), w[0], b, y, g.KH, g.KW,
                                     g.OH, g.OW)
        else:
            cols = s.cols[:g.G * K * width].reshape(g.G, K, width)
            for i in range(count):
                unfold_sample(x, g, n0 + i, cols, i * P)
            for grp in range(g.G):
                np.dot(w[grp], cols[grp], y[grp * g.Fg:(grp + 1) * g.Fg])
        _finish_samples(y, b, g, has_bias and not plan.vector, relu, win, out, index, s, n0,
                        count)


@njit(cache=True, parallel=True)
def _forward_parallel(x, w, b, g, has_bias, relu, win, plan, out, index, s, chunks):
    for t in prange(chunks):
        k = np.int64(t)  # one compiled signature for the span, as when called serially
        _forward_span(x, w, b, g, has_bias, relu, win, plan, out, index, _thread_scratch(s, k),
                      k * g.N // chunks, (k + 1) * g.N // chunks)


@njit(cache=True)
def _direct_forward_span(x, w, b, g, has_bias, relu, win, plan, out, index, s, lo, hi):
    """_forward_span by simd.direct_conv's kernel, one sample at a time (bias added by the
    kernel). w (1, F, C·KH·KW)."""
    y = s.dy[:g.F * g.OH * g.OW].reshape(g.F, g.OH * g.OW)
    for n in range(lo, hi):
        simd_direct.forward_sample(x[n], w[0], b, y, g.KH, g.KW, g.OH, g.OW)
        _finish_samples(y, b, g, False, relu, win, out, index, s, n, 1)


@njit(cache=True, parallel=True)
def _direct_forward_parallel(x, w, b, g, has_bias, relu, win, plan, out, index, s, chunks):
    for t in prange(chunks):
        k = np.int64(t)
        _direct_forward_span(x, w, b, g, has_bias, relu, win, plan, out, index,
                             _thread_scratch(s, k), k * g.N // chunks, (k + 1) * g.N // chunks)


@njit(cache=True, inline="always")
def _row_sum(row):
    """Σ row, as eight interleaved partial sums added pairwise at the end: a single running sum
    is a chain of dependent adds, and without fastmath LLVM may not reorder it into vectors."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = row.dtype.type(0)
    n = row.shape[0]
    n8 = n - n % 8
    for p in range(0, n8, 8):
        s0 += row[p]
        s1 += row[p + 1]
        s2 += row[p + 2]
        s3 += row[p + 3]
        s4 += row[p + 4]
        s5 += row[p + 5]
        s6 += row[p + 6]
        s7 += row[p + 7]
    for p in range(n8, n):
        s0 += row[p]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@njit(cache=True, inline="always")
def _output_gradient(dout, g, relu, mask, index, n, dy, at, db):
    """dy[:, at:at + OH·OW] = the gradient of sample n's conv output (F, OH·OW), from the op's
    output gradient dout (N, F, Q) through the pool (``index`` non-empty) and the ReLU
    (``relu``); db (F,) += its sums. See _backward_span."""
    P = g.OH * g.OW
    Q = dout.shape[2]
    pooled = index.shape[0] > 0
    for f in range(g.F):
        row = dy[f, at:at + P]
        if pooled:
            for p in range(P):
                row[p] = 0
            for q in range(Q):
                k = index[n, f, q]
                if k < 0 or k >= P:
                    raise IndexError("conv2d_relu_maxpool2d_backward: a saved pool index lies "
                                     "outside the convolution's output")
                # relu's gradient is 0 at 0; += as overlapping windows share winners
                if not mask[n, f, q] <= 0:
                    row[k] += dout[n, f, q]
        else:
            for p in range(P):
                if relu and mask[n, f, p] <= 0:
                    row[p] = 0
                else:
                    row[p] = dout[n, f, p]
        db[f] += _row_sum(row)


@njit(cache=True, inline="always")
def _input_gradient(w, g, dy, s, n0, count, products, dx):
    """dx[n0 .. n0 + count - 1] += col2im(w[grp]ᵀ · dy[grp]) for each group; dy (F,
    count·OH·OW)."""
    K = g.Cg * g.KH * g.KW
    width = count * g.OH * g.OW
    dcols = s.dcols[:g.G * K * width].reshape(g.G, K, width)
    for grp in range(g.G):
        dy_grp = dy[grp * g.Fg:(grp + 1) * g.Fg]
        if products:
            simd_linear.accumulate_rows(w[grp], 1, K, dy_grp, dcols[grp], 0, K)
        else:
            np.dot(w[grp].T, dy_grp, dcols[grp])
    for i in range(count):
        fold_sample(dcols, g, n0 + i, dx, i * g.OH * g.OW)


@njit(cache=True)
def _backward_span(dout, x, w, g, relu, mask, index, input_grad, plan, dx, s, lo, hi):
    """Samples [lo, hi), plan.m at a time: dx[n] (with ``input_grad``) and this thread's
    partial dw, transposed, and db in s (its Scratch); with ``plan.vector`` the weight gradient
    by simd.conv's kernel, one sample at a time.

    dout (N, F, Q): the gradient of the op's output (Q = OH·OW, or the pooled PH·PW with
    ``index`` non-empty); mask (N, F, Q): the op's output, whose ReLU gradient is 0 where it
    is <= 0 (``relu``); index (N, F, Q): the pool's winners in the (OH·OW) plane.
    """
    P, K = g.OH * g.OW, g.Cg * g.KH * g.KW
    doutT = s.doutT.reshape(s.doutT.shape[0] // g.F if g.F else 0, g.F)
    for n0 in range(lo, hi, plan.m):
        count = min(n0 + plan.m, hi) - n0
        width = count * P
        cols_width = 0 if plan.vector else width
        cols = s.cols[:g.G * K * cols_width].reshape(g.G, K, cols_width)
        dy = s.dy[:g.F * width].reshape(g.F, width)
        for i in range(count):
            _output_gradient(dout, g, relu, mask, index, n0 + i, dy, i * P, s.db)
            if plan.vector:
                simd_conv.transpose_plane(dy[:, i * P:(i + 1) * P], doutT)
                simd_conv.weight_grad_sample(_vector_sample(x, g, n0 + i, s.padded), doutT,
                                             s.dwT[0], g.KH, g.KW, g.OH, g.OW)
            else:
                unfold_sample(x, g, n0 + i, cols, i * P)
        for grp in range(0 if plan.vector else g.G):
            dy_grp = dy[grp * g.Fg:(grp + 1) * g.Fg]
            if plan.products:  # dwT += cols·dyᵀ: dot products along the samples' positions
                simd_linear.forward_rows(cols[grp], dy_grp, s.db[:0], s.dwT[grp], 0, K, 0, g.Fg,
                                         True)
                continue
            np.dot(cols[grp], dy_grp.T, s.product)
            dwT = s.dwT[grp]
            for k in range(K):
                for f in range(g.Fg):
                    dwT[k, f] += s.product[k, f]
        if input_grad:
            _input_gradient(w, g, dy, s, n0, count, plan.products, dx)


@njit(cache=True, parallel=True)
def _backward_parallel(dout, x, w, g, relu, mask, index, input_grad, plan, dx, s, chunks):
    for t in prange(chunks):
        k = np.int64(t)
        _backward_span(dout, x, w, g, relu, mask, index, input_grad, plan, dx,
                       _thread_scratch(s, k), k * g.N // chunks, (k + 1) * g.N // chunks)


@njit(cache=True)
def _thread_scratch(s, t):
    """Thread t's part of the Scratch s (every field's leading axis is the thread)."""
    return Scratch(s.cols[t], s.dcols[t], s.dy[t], s.conv[t], s.product[t], s.dwT[t], s.db[t],
                   s.padded[t], s.doutT[t])


def _plan(g, dtype, backward=False):
    """The Plan of a pass: threads for the batch (one when the work is too small to share);
    simd's kernels where they apply, one sample at a time in the forward pass; else as many
    samples per GEMM as keep their columns and the GEMM's product (a layer with few input
    channels has a product many times its columns) under BLOCK_BYTES."""
    threads = chunks_for(g.N, g.N * g.F * g.C * g.KH * g.KW * g.OH * g.OW // g.G)
    vector = bool(simd_conv.applies(g, dtype))
    direct = not backward and not vector and bool(simd_direct.applies(g, dtype))
    products = backward and simd_linear.products_apply(g.OH * g.OW, dtype)
    per_sample = (g.C * g.KH * g.KW + g.F) * g.OH * g.OW * np.dtype(dtype).itemsize
    m = max(1, min(BLOCK_BYTES // max(per_sample, 1), -(-g.N // threads)))
    return Plan(threads, 1 if (vector or direct) and not backward else m, vector, direct,
                products)


def _scratch(g, plan, dtype, pooled=False, backward=False, input_grad=False):
    """Scratch buffers for plan.threads threads taking plan.m samples per GEMM (only those the
    pass uses)."""
    T, m, vector, direct, products = plan
    P, K = g.OH * g.OW, g.Cg * g.KH * g.KW
    columns = g.G * K * m * P
    Hp, Wp = simd_conv.padded_size(g)
    pads = vector and (g.top, g.left, Hp, Wp) != (0, 0, g.H, g.W)
    portable_grad = backward and not vector and not products
    fields = [((T, 0 if vector or direct else columns), False),
              ((T, columns if input_grad else 0), False),
              ((T, g.F * m * P), False),
              ((T, g.F, g.OH, g.OW) if pooled else (T, 0, 0, 0), False),
              ((T, K, g.Fg) if portable_grad else (T, 0, 0), False),
              ((T, g.G, K, g.Fg) if backward else (T, 0, 0, 0), True),
              ((T, g.F) if backward else (T, 0), True),
              ((T, g.C * Hp * Wp if pads else 0), True),
              ((T, P * g.F if backward and vector else 0), False)]
    return Scratch(*scratch_arrays([shape for shape, _ in fields], dtype,
                                   [zero for _, zero in fields]))


def forward(x, w, b, g, relu, pooling=None):
    """conv2d(x, w) + b, then ReLU when ``relu``, then max pooling when ``pooling`` is
    (Window, PH, PW). Returns out (N, F, OH, OW) or (N, F, PH, PW), and the pool's index
    (empty when unpooled). x, w C-contiguous of one dtype."""
    has_bias = b is not None
    bias = np.ascontiguousarray(b, dtype=x.dtype) if has_bias else np.zeros(g.F, x.dtype)
    if pooling is None:
        win, shape = NO_POOL, (g.N, g.F, g.OH, g.OW)
        index = np.empty((0, 0, 0, 0), POOL_INDEX)
    else:
        win, PH, PW = pooling
        shape = (g.N, g.F, PH, PW)
        index = np.empty(shape, POOL_INDEX if g.OH * g.OW <= 2**31 - 1 else np.int64)
    out = np.empty(shape, x.dtype)
    if g.N == 0:
        return out, index
    plan = _plan(g, x.dtype)
    K = g.Cg * g.KH * g.KW
    if plan.vector:
        w3 = np.ascontiguousarray(w.reshape(g.F, K).T).reshape(1, K, g.F)
    else:
        w3 = w.reshape(g.G, g.Fg, K)
    s = _scratch(g, plan, x.dtype, pooled=pooling is not None)
    span, parallel = ((_direct_forward_span, _direct_forward_parallel) if plan.direct
                      else (_forward_span, _forward_parallel))
    T = plan.threads

    def chunk(t):
        span(x, w3, bias, g, has_bias, relu, win, plan, out, index,
             Scratch(*(a[t] for a in s)), t * g.N // T, (t + 1) * g.N // T)

    run_split(parallel, chunk, T, x, w3, bias, g, has_bias, relu, win, plan, out, index, s)
    return out, index


def backward(dout, x, w, g, has_bias, relu_out=None, index=None, input_grad=True):
    """Gradients of :func:`forward`: (dx or None, dw, db or None).

    relu_out: forward's output when it applied ReLU (its gradient masks dout), else None;
    index: the pool's winners when forward pooled, else None.
    """
    dtype = x.dtype
    P = g.OH * g.OW
    dout = np.ascontiguousarray(dout, dtype=dtype)
    dout = dout.reshape(g.N, g.F, dout[0, 0].size if g.N and g.F else P)
    relu = relu_out is not None
    mask = relu_out.reshape(dout.shape) if relu else dout
    index = (np.empty((0, 0, 0), POOL_INDEX) if index is None
             else np.ascontiguousarray(index).reshape(dout.shape))
    plan = _plan(g, dtype, backward=True)
    s = _scratch(g, plan, dtype, backward=True, input_grad=input_grad)
    dx = np.zeros((g.N, g.C, g.H, g.W) if input_grad else (0, 0, 0, 0), dtype)
    w3 = w.reshape(g.G, g.Fg, g.Cg * g.KH * g.KW)
    T = plan.threads

    def chunk(t):
        _backward_span(dout, x, w3, g, relu, mask, index, input_grad, plan, dx,
                       Scratch(*(a[t] for a in s)), t * g.N // T, (t + 1) * g.N // T)

    if g.N:
        run_split(_backward_parallel, chunk, T, dout, x, w3, g, relu, mask, index, input_grad,
                  plan, dx, s)
    dw = np.ascontiguousarray(s.dwT.sum(axis=0).transpose(0, 2, 1)).reshape(w.shape)
    db = s.db.sum(axis=0) if has_bias else None
    return (dx if input_grad else None), dw, db


def conv2d_forward(x, w, b, stride, padding, dilation, groups):
    """Grouped, strided, dilated, zero-padded 2-D convolution (torch.nn.functional.conv2d).

    x: (N, C, H, W); w: (F, C // groups, KH, KW); b: (F,) or None; stride (sh, sw); padding
    (top, bottom, left, right); dilation (dh, dw). Returns out (N, F, OH, OW) and a cache.
    """
    x = np.ascontiguousarray(x)
    w = np.ascontiguousarray(w, dtype=x.dtype)
    g = geometry(x.shape, w.shape, stride, padding, dilation, groups)
    out, _ = forward(x, w, b, g, False)
    return out, (x, w, b is not None, g)


def conv2d_backward(dout, cache, input_grad=True):
    """Gradients of conv2d_forward. dout: (N, F, OH, OW).

    Returns (dx, dw, db): dx (N, C, H, W) (None without input_grad), dw (F, C // groups, KH, KW),
    db (F,) or None.
    """
    x, w, has_bias, g = cache
    return backward(dout, x, w, g, has_bias, input_grad=input_grad)
