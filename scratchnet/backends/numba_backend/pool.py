"""Max pooling (numpy twin: numpy_backend/pool.py): the N·C planes split across threads.

    out[p, oh, ow] = max over the window's taps x[p, oh·SH - PH + a·DH, ow·SW - PW + b·DW]
    dx[p, index[p, oh, ow]] += dout[p, oh, ow]

Inside a window, torch's row-major scan decides: strictly greater values and every NaN take
over (ties keep the first maximum, the last NaN wins). Padding is -inf and never wins.
"""
from collections import namedtuple

import numpy as np
from numba import njit, prange

from ..shapes import pool_output_size
from .common import launch

__all__ = ["maxpool2d_forward", "maxpool2d_backward"]

Window = namedtuple("Window", "KH KW SH SW PH PW DH DW")
Window.__doc__ = "A pooling window's kernel, stride, padding and dilation, read by name."

U = np.uint64  # an unsigned index: no negative-index wrapping in the 2×2 loop


@njit(cache=True, inline="always")
def _taps(size, out_size, K, S, P, D):
    """First in-bounds tap of each window along one axis and how many taps are in bounds."""
    first = np.empty(out_size, dtype=np.int64)
    count = np.empty(out_size, dtype=np.int64)
    for o in range(out_size):
        start = o * S - P
        stop = min(start + (K - 1) * D + 1, size)
        while start < 0:
            start += D
        first[o] = start
        count[o] = (stop - start + D - 1) // D
    return first, count


@njit(cache=True, inline="always")
def _scan(a, k, m, j):
    """One step of torch's scan over a window: (a, k) takes over (m, j) when a is strictly
    greater or NaN; a select, not a branch."""
    take = (a > m) | (a != a)
    return (a if take else m), (k if take else j)


@njit(cache=True)
def _plain_2x2_span(x, out, index, lo, hi):
    """Planes [lo, hi) of MaxPool2d(2) windows that all lie inside the input.

    Each window is torch's scan as three selects (_scan), with no branch: a branch would follow
    the data and mispredict, and rows of 16 or more outputs vectorise.
    """
    H, W = x.shape[1], x.shape[2]
    OH, OW = out.shape[1], out.shape[2]
    xf, of, jf = x.reshape(x.size), out.reshape(out.size), index.reshape(index.size)
    for p in range(lo, hi):
        for oh in range(OH):
            k0 = 2 * oh * W
            r0 = p * H * W + k0
            r1 = r0 + W
            d = (p * OH + oh) * OW
            for ow in range(OW):
                c = 2 * ow
                m, j = xf[U(r0 + c)], 0
                m, j = _scan(xf[U(r0 + c + 1)], 1, m, j)
                m, j = _scan(xf[U(r1 + c)], W, m, j)
                m, j = _scan(xf[U(r1 + c + 1)], W + 1, m, j)
                of[U(d + ow)] = m
                jf[U(d + ow)] = k0 + c + j


@njit(cache=True)
def forward_span(x, win, out, index, lo, hi):
    """out, index (P, OH, OW) of planes [lo, hi) of x (P, H, W); index: the winner's h·W + w."""
    P, H, W = x.shape
    OH, OW = out.shape[1], out.shape[2]
    if (win.KH == 2 and win.KW == 2 and win.SH == 2 and win.SW == 2 and win.PH == 0
            and win.PW == 0 and win.DH == 1 and win.DW == 1 and 2 * OH <= H and 2 * OW <= W):
        _plain_2x2_span(x, out, index, lo, hi)
        return
    h_first, h_count = _taps(H, OH, win.KH, win.SH, win.PH, win.DH)
    w_first, w_count = _taps(W, OW, win.KW, win.SW, win.PW, win.DW)
    planes = x.reshape(P, H * W)
    # one output row at a time, window row by window row: longer inner loops
    best_val = np.empty(OW, dtype=x.dtype)
    best_idx = np.empty(OW, dtype=np.int64)
    for p in range(lo, hi):
        plane = planes[p]
        for oh in range(OH):
            for ow in range(OW):
                best_val[ow] = -np.inf
                best_idx[ow] = h_first[oh] * W + w_first[ow]
            for a in range(h_count[oh]):
                row = (h_first[oh] + a * win.DH) * W
                for ow in range(OW):
                    m = best_val[ow]
                    k = best_idx[ow]
                    for b in range(w_count[ow]):
                        j = row + w_first[ow] + b * win.DW
                        v = plane[j]
                        if v > m or v != v:
                            m = v
                            k = j
                    best_val[ow] = m
                    best_idx[ow] = k
            for ow in range(OW):
                out[p, oh, ow] = best_val[ow]
                index[p, oh, ow] = best_idx[ow]


@njit(cache=True, parallel=True)
def _forward_parallel(x, win, out, index, chunks):
    P = x.shape[0]
    for c in prange(chunks):
        forward_span(x, win, out, index, c * P // chunks, (c + 1) * P // chunks)


@njit(cache=True)
def _backward_span(dout, index, dx, lo, hi):
    OH, OW = dout.shape[1], dout.shape[2]
    size = dx.shape[1]
    for p in range(lo, hi):
        for oh in range(OH):
            for ow in range(OW):
                k = index[p, oh, ow]
                if k < 0 or k >= size:
                    raise IndexError("maxpool2d_backward: a saved index lies outside the input")
                # += because overlapping windows can pick the same element
                dx[p, k] += dout[p, oh, ow]


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
    win = Window(*kernel_size, *stride, *padding, *dilation)
    OH = pool_output_size(H, win.KH, win.SH, win.PH, win.DH, ceil_mode)
    OW = pool_output_size(W, win.KW, win.SW, win.PW, win.DW, ceil_mode)
    P = N * C
    out = np.empty((P, OH, OW), dtype=x.dtype)
    index = np.empty((P, OH, OW), dtype=np.int64)
    launch(forward_span, _forward_parallel, P, P * OH * OW * win.KH * win.KW,
           np.ascontiguousarray(x).reshape(P, H, W), win, out, index)
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
