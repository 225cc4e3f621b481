"""2-D convolution (numpy twin: numpy_backend/conv.py) as im2col kernels around np.matmul.

    cols[g, (c, kh, kw), (n, oh, ow)] = x_padded[n, g·Cg + c, oh·sh + kh·dh, ow·sw + kw·dw]
    out[n, f]  = b[f] + Σ_k w[f, k] · cols[g(f), k, n]                 (one product per group)
    dw[f]      = Σ_{n,oh,ow} dout[n, f] · cols[g(f), :, n]
    dcols      = w[g]ᵀ · dout[n, g],   then folded back (col2im) into dx

The columns of a chunk of samples sit side by side (Chainer's layout), so one ``np.matmul``
per chunk does every GEMM of the chunk: BLAS runs a few large products on its own threads,
which it does well, and the kernels around them (unfold, bias, fold) split samples and
channels across Numba's threads. Chunks bound the columns' memory (inference batches).
"""
from collections import namedtuple

import numpy as np
from numba import njit, prange

from ..shapes import conv_output_size
from .common import launch

__all__ = ["conv2d_forward", "conv2d_backward"]

# the columns of one chunk of samples stay under this many bytes
CHUNK_BYTES = 16 << 20

Geometry = namedtuple("Geometry", "N C H W F G Cg Fg KH KW sh sw top left dh dw OH OW")
Geometry.__doc__ = """Every size of one convolution, built by :func:`geometry`; kernels read it by name."""


def geometry(x_shape, w_shape, stride, padding, dilation, groups):
    """The Geometry of conv2d(x, w) with torch's stride, (t, b, l, r) padding and dilation."""
    N, C, H, W = x_shape
    F, Cg, KH, KW = w_shape
    top, bottom, left, right = padding
    OH = conv_output_size(H, top, bottom, KH, stride[0], dilation[0])
    OW = conv_output_size(W, left, right, KW, stride[1], dilation[1])
    return Geometry(N, C, H, W, F, groups, Cg, F // groups, KH, KW, stride[0], stride[1],
                    top, left, dilation[0], dilation[1], OH, OW)


@njit(cache=True)
def _inside(offset, stride, size, n_out):
    """The range [lo, hi) of outputs o whose tap ``o·stride + offset`` lies in [0, size)."""
    lo = 0 if offset >= 0 else (stride - 1 - offset) // stride
    hi = 0 if size <= offset else (size - offset + stride - 1) // stride
    lo = min(lo, n_out)
    return lo, max(lo, min(hi, n_out))


@njit(cache=True)
def _unfold_span(x, g, n0, cols, lo, hi):
    """cols for items [lo, hi) of the chunk starting at sample n0 (an item: a sample's channel)."""
    P = g.OH * g.OW
    for item in range(lo, hi):
        i = item // g.C
        c = item - i * g.C
        grp = c // g.Cg
        k0 = (c - grp * g.Cg) * g.KH * g.KW
        for kh in range(g.KH):
            for kw in range(g.KW):
                row = cols[grp, k0 + kh * g.KW + kw]
                offset = kw * g.dw - g.left
                ow0, ow1 = _inside(offset, g.sw, g.W, g.OW)
                for oh in range(g.OH):
                    h = oh * g.sh - g.top + kh * g.dh
                    at = i * P + oh * g.OW
                    if h < 0 or h >= g.H:
                        ow0_h, ow1_h = g.OW, g.OW
                    else:
                        ow0_h, ow1_h = ow0, ow1
                    for ow in range(min(ow0_h, g.OW)):
                        row[at + ow] = 0
                    for ow in range(ow0_h, ow1_h):
                        row[at + ow] = x[n0 + i, c, h, ow * g.sw + offset]
                    for ow in range(ow1_h, g.OW):
                        row[at + ow] = 0


@njit(cache=True, parallel=True)
def _unfold_parallel(x, g, n0, cols, chunks):
    items = cols.shape[2] // max(g.OH * g.OW, 1) * g.C
    for t in prange(chunks):
        _unfold_span(x, g, n0, cols, t * items // chunks, (t + 1) * items // chunks)


@njit(cache=True)
def _fold_span(dcols, g, n0, dx, lo, hi):
    """Add dcols back onto dx for items [lo, hi) (a sample's channel: no two items share dx)."""
    P = g.OH * g.OW
    for item in range(lo, hi):
        i = item // g.C
        c = item - i * g.C
        grp = c // g.Cg
        k0 = (c - grp * g.Cg) * g.KH * g.KW
        for kh in range(g.KH):
            for kw in range(g.KW):
                row = dcols[grp, k0 + kh * g.KW + kw]
                offset = kw * g.dw - g.left
                ow0, ow1 = _inside(offset, g.sw, g.W, g.OW)
                for oh in range(g.OH):
                    h = oh * g.sh - g.top + kh * g.dh
                    if h < 0 or h >= g.H:
                        continue
                    at = i * P + oh * g.OW
                    for ow in range(ow0, ow1):
                        dx[n0 + i, c, h, ow * g.sw + offset] += row[at + ow]


@njit(cache=True, parallel=True)
def _fold_parallel(dcols, g, n0, dx, chunks):
    items = dcols.shape[2] // max(g.OH * g.OW, 1) * g.C
    for t in prange(chunks):
        _fold_span(dcols, g, n0, dx, t * items // chunks, (t + 1) * items // chunks)


@njit(cache=True)
def _bias_relu_span(y, b, has_bias, relu, n0, out, lo, hi):
    """out[n0 + i, f] = y[f, i] + b[f], then max(·, 0) when ``relu`` (NaN passes, as torch's
    clamp_min), for items [lo, hi) (an item: a sample's filter). y (F, n, P), out (N, F, P)."""
    F, P = y.shape[0], y.shape[2]
    for item in range(lo, hi):
        i = item // F
        f = item - i * F
        src = y[f, i]
        dst = out[n0 + i, f]
        bias = b[f]
        for p in range(P):
            v = src[p]
            if has_bias:
                v = v + bias
            # `v < 0`, not `v > 0`, so NaN passes through
            if relu and v < 0:
                dst[p] = 0
            else:
                dst[p] = v


@njit(cache=True, parallel=True)
def _bias_relu_parallel(y, b, has_bias, relu, n0, out, chunks):
    items = y.shape[0] * y.shape[1]
    for t in prange(chunks):
        _bias_relu_span(y, b, has_bias, relu, n0, out, t * items // chunks,
                        (t + 1) * items // chunks)


@njit(cache=True)
def _gather_grad_span(dout, out, relu, n0, dy, lo, hi):
    """dy[f, i] = dout[n0 + i, f], zeroed where ``relu`` and out <= 0 (relu's gradient is 0
    at 0), for items [lo, hi) (a sample's filter). dout, out (N, F, P), dy (F, n, P)."""
    F, P = dy.shape[0], dy.shape[2]
    for item in range(lo, hi):
        i = item // F
        f = item - i * F
        src = dout[n0 + i, f]
        dst = dy[f, i]
        if relu:
            mask = out[n0 + i, f]
            for p in range(P):
                if mask[p] <= 0:
                    dst[p] = 0
                else:
                    dst[p] = src[p]
        else:
            for p in range(P):
                dst[p] = src[p]


@njit(cache=True, parallel=True)
def _gather_grad_parallel(dout, out, relu, n0, dy, chunks):
    items = dy.shape[0] * dy.shape[1]
    for t in prange(chunks):
        _gather_grad_span(dout, out, relu, n0, dy, t * items // chunks,
                          (t + 1) * items // chunks)


def _chunk_samples(g, itemsize):
    """Samples per chunk: as many as keep the chunk's columns under CHUNK_BYTES (at least 1)."""
    per_sample = g.C * g.KH * g.KW * g.OH * g.OW * itemsize
    return max(1, min(g.N, CHUNK_BYTES // max(per_sample, 1)))


def _unfold(x, g, n0, n1):
    """The columns (G, Cg·KH·KW, (n1-n0)·OH·OW) of samples [n0, n1)."""
    cols = np.empty((g.G, g.Cg * g.KH * g.KW, (n1 - n0) * g.OH * g.OW), dtype=x.dtype)
    items = (n1 - n0) * g.C
    launch(_unfold_span, _unfold_parallel, items, cols.size, x, g, n0, cols)
    return cols


def forward(x, w, b, g, relu):
    """conv2d(x, w) + b, then ReLU when ``relu``: out (N, F, OH, OW). x, w C-contiguous."""
    out = np.empty((g.N, g.F, g.OH * g.OW), dtype=x.dtype)
    has_bias = b is not None
    bias = np.ascontiguousarray(b, dtype=x.dtype) if has_bias else np.zeros(g.F, x.dtype)
    wg = w.reshape(g.G, g.Fg, g.Cg * g.KH * g.KW)
    step = _chunk_samples(g, x.itemsize)
    for n0 in range(0, g.N, step):
        n1 = min(g.N, n0 + step)
        y = np.matmul(wg, _unfold(x, g, n0, n1)).reshape(g.F, n1 - n0, g.OH * g.OW)
        launch(_bias_relu_span, _bias_relu_parallel, (n1 - n0) * g.F, y.size,
               y, bias, has_bias, relu, n0, out)
    return out.reshape(g.N, g.F, g.OH, g.OW)


def backward(dout, x, w, g, has_bias, relu_out, input_grad):
    """Gradients of :func:`forward`: (dx or None, dw, db or None).

    relu_out: forward's output when it applied ReLU (its gradient masks dout), else None.
    """
    dtype = x.dtype
    P = g.OH * g.OW
    dout = np.ascontiguousarray(dout, dtype=dtype).reshape(g.N, g.F, P)
    relu = relu_out is not None
    mask = relu_out.reshape(g.N, g.F, P) if relu else dout
    Kg = g.Cg * g.KH * g.KW
    wg = w.reshape(g.G, g.Fg, Kg)
    dw = np.zeros((g.G, g.Fg, Kg), dtype=dtype)
    db = np.zeros(g.F, dtype=dtype)
    dx = np.zeros(x.shape, dtype=dtype) if input_grad else None
    step = _chunk_samples(g, x.itemsize)
    for n0 in range(0, g.N, step):
        n1 = min(g.N, n0 + step)
        dy = np.empty((g.F, n1 - n0, P), dtype=dtype)
        launch(_gather_grad_span, _gather_grad_parallel, (n1 - n0) * g.F, dy.size,
               dout, mask, relu, n0, dy)
        db += dy.sum(axis=(1, 2))
        dy = dy.reshape(g.G, g.Fg, (n1 - n0) * P)
        cols = _unfold(x, g, n0, n1)
        dw += np.matmul(dy, cols.transpose(0, 2, 1))
        if input_grad:
            dcols = np.matmul(wg.transpose(0, 2, 1), dy)
            launch(_fold_span, _fold_parallel, (n1 - n0) * g.C, dcols.size, dcols, g, n0, dx)
    return dx, dw.reshape(w.shape), (db if has_bias else None)


def conv2d_forward(x, w, b, stride, padding, dilation, groups):
    """Grouped, strided, dilated, zero-padded 2-D convolution (torch.nn.functional.conv2d).

    x: (N, C, H, W); w: (F, C // groups, KH, KW); b: (F,) or None; stride (sh, sw); padding
    (top, bottom, left, right); dilation (dh, dw). Returns out (N, F, OH, OW) and a cache.
    """
    x = np.ascontiguousarray(x)
    w = np.ascontiguousarray(w, dtype=x.dtype)
    g = geometry(x.shape, w.shape, stride, padding, dilation, groups)
    return forward(x, w, b, g, False), (x, w, b is not None, g)


def conv2d_backward(dout, cache, input_grad=True):
    """Gradients of conv2d_forward. dout: (N, F, OH, OW).

    Returns (dx, dw, db): dx (N, C, H, W) (None without input_grad), dw (F, C // groups, KH, KW),
    db (F,) or None.
    """
    x, w, has_bias, g = cache
    return backward(dout, x, w, g, has_bias, None, input_grad)
