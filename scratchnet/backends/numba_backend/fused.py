"""Fused kernels: convolution + bias + ReLU (+ max pool), and linear + ReLU, in one pass.

Why fuse: run as separate ops, conv, ReLU and max pool each launch the thread pool, allocate
a full-size output and stream it through memory again (PERF_NOTES: the fused design reached
1.73x torch on digitcnn where separate ops stayed near 1x). Here thread ``t`` owns samples
``[t·N//T, (t+1)·N//T)`` as in conv.py and, per sample, unfolds the input (im2col), runs the
GEMM into a per-thread (F, OH·OW) buffer that stays in cache, adds the bias, and then either
applies ReLU into the output or max-pools that buffer into the output and applies ReLU to the
pooled values. Only the pooled output and the winners' indices leave the thread.

ReLU and max pooling commute exactly, gradient included, so one kernel serves
``conv -> relu -> pool`` and ``conv -> pool -> relu``: the pooled value is relu(max) = max(relu),
and a window whose max is <= 0 passes no gradient either way. In backward, thread ``t`` scatters
``dout`` (masked where the output is <= 0, as relu_backward does) to the saved winners in a
per-thread (F, OH·OW) buffer and runs conv.py's per-sample backward on it. Sample partition,
GEMM calls and summation order are those of the unfused ops, so results are identical.
"""
import numpy as np
from numba import njit, prange

from ..numpy_backend.pool import pool_output_size
from . import linear as _linear
from .activation import (_relu_backward_parallel, _relu_backward_span, _relu_parallel,
                         _relu_span, launch)
from .conv import (_as_matrix, _geometry, _kernel_array, _n_threads, add_bias_sample,
                   add_row_sums_sample, col2im_sample, gemm_backward_sample, gemm_forward_sample,
                   im2col_sample, is_pointwise, out_size)
from .pool import _forward_span as _pool_span

__all__ = ["conv2d_relu_forward", "conv2d_relu_backward",
           "conv2d_relu_maxpool2d_forward", "conv2d_relu_maxpool2d_backward",
           "linear_relu_forward", "linear_relu_backward"]


@njit(cache=True)
def _conv_sample(x, n, w2, b, has_bias, col, conv2, geo_kh, geo_kw, sh, sw, pt, pb, pl, pr,
                 dh, dw, groups, OH, OW):
    """conv2 (F, OH·OW) = conv(x[n]) + bias; col is this thread's column buffer."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    if is_pointwise(geo_kh, geo_kw, sh, sw, pt, pb, pl, pr):
        col = x[n].reshape(C, H * W)
    else:
        im2col_sample(x[n], col, geo_kh, geo_kw, sh, sw, pt, pl, dh, dw, OH, OW)
    gemm_forward_sample(w2, col, conv2, groups)
    if has_bias:
        add_bias_sample(conv2, b)


@njit(cache=True)
def _conv_backward_sample(x, n, w2, dconv2, has_bias, dx, dw2, db, col, dcol, KH, KW, sh, sw,
                          pt, pb, pl, pr, dh, dw, groups, OH, OW):
    """Add sample n's share of dW and db into this thread's partials and write dx[n]."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    if is_pointwise(KH, KW, sh, sw, pt, pb, pl, pr):
        col = x[n].reshape(C, H * W)
        dcol = dx[n].reshape(C, H * W)
        gemm_backward_sample(w2, col, dconv2, dw2, dcol, groups)
    else:
        im2col_sample(x[n], col, KH, KW, sh, sw, pt, pl, dh, dw, OH, OW)
        gemm_backward_sample(w2, col, dconv2, dw2, dcol, groups)
        col2im_sample(dcol, dx[n], KH, KW, sh, sw, pt, pl, dh, dw, OH, OW)
    if has_bias:
        add_row_sums_sample(dconv2, db)


@njit(cache=True, parallel=True)
def _conv_relu_pool_forward_kernel(x, w2, b, has_bias, out, index, cols, convs,
                                   KH, KW, sh, sw, pt, pb, pl, pr, dh, dw, groups,
                                   pkh, pkw, psh, psw, pph, ppw, pdh, pdw):
    """out (N, F, PH, PW) = relu(maxpool(conv(x) + b)); index: each winner's oh·OW + ow."""
    N = x.shape[0]
    F, OH, OW = convs.shape[1], convs.shape[2], convs.shape[3]
    PH, PW = out.shape[2], out.shape[3]
    T = convs.shape[0]
    for t in prange(T):
        conv3 = convs[t]
        conv2 = conv3.reshape(F, OH * OW)
        for n in range((t * N) // T, ((t + 1) * N) // T):
            _conv_sample(x, n, w2, b, has_bias, cols[t], conv2, KH, KW, sh, sw, pt, pb, pl, pr,
                         dh, dw, groups, OH, OW)
            _pool_span(conv3, pkh, pkw, psh, psw, pph, ppw, pdh, pdw, out[n], index[n], 0, F)
            o = out[n].reshape(F * PH * PW)
            _relu_span(o, o, 0, o.size)


@njit(cache=True, parallel=True)
def _conv_relu_pool_backward_kernel(x, w2, dout, out, index, has_bias, dx, dw_part, db_part,
                                    cols, dcols, dconvs, KH, KW, sh, sw, pt, pb, pl, pr,
                                    dh, dw, groups, OH, OW):
    N = x.shape[0]
    F = dconvs.shape[1]
    PH, PW = dout.shape[2], dout.shape[3]
    T = dconvs.shape[0]
    for t in prange(T):
        dconv2 = dconvs[t]
        for n in range((t * N) // T, ((t + 1) * N) // T):
            dconv2[:, :] = 0
            for f in range(F):
                for i in range(PH):
                    for j in range(PW):
                        # relu_backward's mask (out <= 0 passes nothing), then the pool's
                        # scatter; += as overlapping windows can share a winner
                        if not out[n, f, i, j] <= 0:
                            dconv2[f, index[n, f, i, j]] += dout[n, f, i, j]
            _conv_backward_sample(x, n, w2, dconv2, has_bias, dx, dw_part[t], db_part[t],
                                  cols[t], dcols[t], KH, KW, sh, sw, pt, pb, pl, pr,
                                  dh, dw, groups, OH, OW)


@njit(cache=True, parallel=True)
def _conv_relu_forward_kernel(x, w2, b, has_bias, out, cols, KH, KW, sh, sw, pt, pb, pl, pr,
                              dh, dw, groups):
    N = x.shape[0]
    F, OH, OW = out.shape[1], out.shape[2], out.shape[3]
    T = cols.shape[0]
    for t in prange(T):
        for n in range((t * N) // T, ((t + 1) * N) // T):
            conv2 = out[n].reshape(F, OH * OW)
            _conv_sample(x, n, w2, b, has_bias, cols[t], conv2, KH, KW, sh, sw, pt, pb, pl, pr,
                         dh, dw, groups, OH, OW)
            o = out[n].reshape(F * OH * OW)
            _relu_span(o, o, 0, o.size)


@njit(cache=True, parallel=True)
def _conv_relu_backward_kernel(x, w2, dout, out, has_bias, dx, dw_part, db_part, cols, dcols,
                               dconvs, KH, KW, sh, sw, pt, pb, pl, pr, dh, dw, groups):
    N = x.shape[0]
    F, P = dconvs.shape[1], dconvs.shape[2]
    OH, OW = out.shape[2], out.shape[3]
    T = dconvs.shape[0]
    for t in prange(T):
        dconv2 = dconvs[t]
        for n in range((t * N) // T, ((t + 1) * N) // T):
            d = dconv2.reshape(F * P)
            _relu_backward_span(dout[n].reshape(F * P), out[n].reshape(F * P), d, 0, F * P)
            _conv_backward_sample(x, n, w2, dconv2, has_bias, dx, dw_part[t], db_part[t],
                                  cols[t], dcols[t], KH, KW, sh, sw, pt, pb, pl, pr,
                                  dh, dw, groups, OH, OW)


def _conv_setup(x, w, b, stride, padding, dilation):
    dtype = x.dtype
    x = _kernel_array(x, dtype)
    w = _kernel_array(w, dtype)
    geo = _geometry(w, stride, padding, dilation)
    KH, KW, sh, sw, pt, pb, pl, pr, dh, dw = geo
    OH = out_size(x.shape[2], pt, pb, KH, sh, dh)
    OW = out_size(x.shape[3], pl, pr, KW, sw, dw)
    has_bias = b is not None
    bias = _kernel_array(b, dtype) if has_bias else np.zeros(w.shape[0], dtype=dtype)
    return x, w, bias, has_bias, geo, OH, OW


def _col_buffers(T, C, OH, OW, geo, dtype):
    """Per-thread column buffers (T, C·KH·KW, OH·OW), empty when im2col is the identity."""
    if is_pointwise(*geo[:8]):
        return np.zeros((T, 0, 0), dtype=dtype)
    # zeros, not empty: see conv.py (beta·c with beta 0 under NUMBA_DISABLE_JIT)
    return np.zeros((T, C * geo[0] * geo[1], OH * OW), dtype=dtype)


def _backward_buffers(x, w, geo, OH, OW, T):
    C, F, dtype = x.shape[1], w.shape[0], x.dtype
    cols = _col_buffers(T, C, OH, OW, geo, dtype)
    dcols = np.zeros_like(cols)
    dconvs = np.zeros((T, F, OH * OW), dtype=dtype)
    dw_part = np.zeros((T, F, w.shape[1] * geo[0] * geo[1]), dtype=dtype)
    db_part = np.zeros((T, F), dtype=dtype)
    return cols, dcols, dconvs, dw_part, db_part


def _finish(dw_part, db_part, w, has_bias):
    """Sum the per-thread partials as conv2d_backward does."""
    dw = dw_part.sum(axis=0).reshape(w.shape)
    db = db_part.sum(axis=0) if has_bias else None
    return dw, db


def conv2d_relu_forward(x, w, b, stride, padding, dilation, groups):
    """relu(conv2d(x)). Arguments and result as conv2d_forward. Returns (out, cache)."""
    x, w, bias, has_bias, geo, OH, OW = _conv_setup(x, w, b, stride, padding, dilation)
    N, C = x.shape[0], x.shape[1]
    out = np.zeros((N, w.shape[0], OH, OW), dtype=x.dtype)
    groups = int(groups)
    cache = (x, w, has_bias, geo, groups, out)
    if N > 0:
        T = _n_threads(N)
        _conv_relu_forward_kernel(x, _as_matrix(w), bias, has_bias, out,
                                  _col_buffers(T, C, OH, OW, geo, x.dtype), *geo, groups)
    return out, cache


def conv2d_relu_backward(dout, cache):
    """dout (N, F, OH, OW). Returns (dx, dw, db) as conv2d_backward."""
    x, w, has_bias, geo, groups, out = cache
    N, OH, OW = x.shape[0], out.shape[2], out.shape[3]
    dout = _kernel_array(dout, x.dtype)
    T = _n_threads(N)
    cols, dcols, dconvs, dw_part, db_part = _backward_buffers(x, w, geo, OH, OW, T)
    dx = np.zeros_like(x)
    if N > 0:
        _conv_relu_backward_kernel(x, _as_matrix(w), dout, out, has_bias, dx, dw_part, db_part,
                                   cols, dcols, dconvs, *geo, groups)
    return (dx,) + _finish(dw_part, db_part, w, has_bias)


def conv2d_relu_maxpool2d_forward(x, w, b, stride, padding, dilation, groups,
                                  kernel_size, pool_stride, pool_padding, pool_dilation,
                                  ceil_mode):
    """maxpool2d(relu(conv2d(x))) (== relu(maxpool2d(conv2d(x)))) in one parallel pass.

    Convolution arguments as conv2d_forward, then the pool's as maxpool2d_forward.
    Returns (out, cache); out (N, F, PH, PW).
    """
    x, w, bias, has_bias, geo, OH, OW = _conv_setup(x, w, b, stride, padding, dilation)
    N, C, F = x.shape[0], x.shape[1], w.shape[0]
    (pkh, pkw), (psh, psw), (pph, ppw), (pdh, pdw) = (
        kernel_size, pool_stride, pool_padding, pool_dilation)
    PH = pool_output_size(OH, pkh, psh, pph, pdh, ceil_mode)
    PW = pool_output_size(OW, pkw, psw, ppw, pdw, ceil_mode)
    groups = int(groups)
    out = np.empty((N, F, PH, PW), dtype=x.dtype)
    index = np.empty((N, F, PH, PW), dtype=np.int64)
    cache = (x, w, has_bias, geo, groups, out, index, OH, OW)
    if N > 0:
        T = _n_threads(N)
        convs = np.zeros((T, F, OH, OW), dtype=x.dtype)
        _conv_relu_pool_forward_kernel(x, _as_matrix(w), bias, has_bias, out, index,
                                       _col_buffers(T, C, OH, OW, geo, x.dtype), convs,
                                       *geo, groups, pkh, pkw, psh, psw, pph, ppw, pdh, pdw)
    return out, cache


def conv2d_relu_maxpool2d_backward(dout, cache):
    """dout (N, F, PH, PW). Returns (dx, dw, db) as conv2d_backward."""
    x, w, has_bias, geo, groups, out, index, OH, OW = cache
    N = x.shape[0]
    dout = _kernel_array(dout, x.dtype)
    T = _n_threads(N)
    cols, dcols, dconvs, dw_part, db_part = _backward_buffers(x, w, geo, OH, OW, T)
    dx = np.zeros_like(x)
    if N > 0:
        _conv_relu_pool_backward_kernel(x, _as_matrix(w), dout, out, index, has_bias, dx,
                                        dw_part, db_part, cols, dcols, dconvs, *geo, groups,
                                        OH, OW)
    return (dx,) + _finish(dw_part, db_part, w, has_bias)


def linear_relu_forward(x, w, b):
    """relu(x·wᵀ + b). Arguments as linear_forward. Returns (out, cache)."""
    out, cache = _linear.linear_forward(x, w, b)
    flat = out.reshape(-1)
    launch(_relu_span, _relu_parallel, flat.size, flat.size, flat, flat)
    return out, (cache, out)


def linear_relu_backward(dout, cache):
    """dout (N, out). Returns (dx, dw, db) as linear_backward."""
    linear_cache, out = cache
    dy = np.empty(out.shape, dtype=out.dtype)
    launch(_relu_backward_span, _relu_backward_parallel, out.size, out.size,
           np.ascontiguousarray(dout, dtype=out.dtype).reshape(-1), out.reshape(-1),
           dy.reshape(-1))
    return _linear.linear_backward(dy, linear_cache)
