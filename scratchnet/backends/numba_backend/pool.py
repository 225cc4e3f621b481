"""Max pooling kernels: the N·C planes split across threads, torch's scan inside each window."""
import numpy as np
from numba import njit, prange

from ..numpy_backend.pool import pool_output_size
from .activation import launch

__all__ = ["maxpool2d_forward", "maxpool2d_backward"]


@njit(cache=True)
def _forward_span(x, KH, KW, SH, SW, PH, PW, DH, DW, out, index, lo, hi):
    H, W = x.shape[1], x.shape[2]
    OH, OW = out.shape[1], out.shape[2]
    for p in range(lo, hi):
        for oh in range(OH):
            h0 = oh * SH - PH
            h1 = min(h0 + (KH - 1) * DH + 1, H)
            while h0 < 0:
                h0 += DH
            for ow in range(OW):
                w0 = ow * SW - PW
                w1 = min(w0 + (KW - 1) * DW + 1, W)
                while w0 < 0:
                    w0 += DW
                # torch's rule: start from -inf at the first real element, take strictly
                # greater values and every NaN (first max wins ties, last NaN wins)
                best = h0 * W + w0
                m = -np.inf
                for ih in range(h0, h1, DH):
                    for iw in range(w0, w1, DW):
                        v = x[p, ih, iw]
                        if v > m or np.isnan(v):
                            m = v
                            best = ih * W + iw
                out[p, oh, ow] = m
                index[p, oh, ow] = best


@njit(cache=True, parallel=True)
def _forward_parallel(x, KH, KW, SH, SW, PH, PW, DH, DW, out, index, chunks):
    P = x.shape[0]
    for c in prange(chunks):
        _forward_span(x, KH, KW, SH, SW, PH, PW, DH, DW, out, index,
                      c * P // chunks, (c + 1) * P // chunks)


@njit(cache=True)
def _backward_span(dout, index, dx, lo, hi):
    OH, OW = dout.shape[1], dout.shape[2]
    for p in range(lo, hi):
        for oh in range(OH):
            for ow in range(OW):
                # += because overlapping windows can pick the same element
                dx[p, index[p, oh, ow]] += dout[p, oh, ow]


@njit(cache=True, parallel=True)
def _backward_parallel(dout, index, dx, chunks):
    P = dout.shape[0]
    for c in prange(chunks):
        _backward_span(dout, index, dx, c * P // chunks, (c + 1) * P // chunks)


def maxpool2d_forward(x, kernel_size, stride, padding, dilation, ceil_mode):
    """Max over each (dilated) window; padding counts as -inf.

    x: (N, C, H, W); kernel_size, stride, padding (symmetric), dilation: pairs (h, w).
    Returns out (N, C, OH, OW) and a cache (flat ``h·W + w`` argmax per output, int64, and
    x's shape).
    """
    N, C, H, W = x.shape
    (KH, KW), (SH, SW), (PH, PW), (DH, DW) = kernel_size, stride, padding, dilation
    OH = pool_output_size(H, KH, SH, PH, DH, ceil_mode)
    OW = pool_output_size(W, KW, SW, PW, DW, ceil_mode)
    P = N * C
    out = np.empty((P, OH, OW), dtype=x.dtype)
    index = np.empty((P, OH, OW), dtype=np.int64)
    launch(_forward_span, _forward_parallel, P, P * OH * OW * KH * KW,
           np.ascontiguousarray(x).reshape(P, H, W), KH, KW, SH, SW, PH, PW, DH, DW, out, index)
    return out.reshape(N, C, OH, OW), (index.reshape(N, C, OH, OW), x.shape)


def maxpool2d_backward(dout, cache):
    """Each output's gradient goes to the one input element saved in forward.

    dout: (N, C, OH, OW). Returns dx: (N, C, H, W).
    """
    index, x_shape = cache
    N, C, H, W = x_shape
    P, OH, OW = N * C, index.shape[2], index.shape[3]
    dx = np.zeros((P, H * W), dtype=dout.dtype)
    launch(_backward_span, _backward_parallel, P, P * (H * W + OH * OW),
           np.ascontiguousarray(dout).reshape(P, OH, OW),
           np.ascontiguousarray(index).reshape(P, OH, OW), dx)
    return dx.reshape(x_shape)
