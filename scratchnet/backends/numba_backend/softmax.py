"""Softmax and log-softmax along any axis (numpy twin: numpy_backend/softmax.py).

    softmax = exp(x - max) / Σ exp(x - max)      log_softmax = (x - max) - log Σ exp(x - max)

x is viewed as (A, L, B) with L the softmax axis; each of the A·B lines (stride B) is an
independent item: max, then sum of exp(x - max), then the output.
"""
import math

import numpy as np
from numba import njit, prange

from .common import launch

__all__ = ["softmax_forward", "softmax_backward", "log_softmax_forward", "log_softmax_backward"]


@njit(cache=True)
def _forward_span(x, out, log, lo, hi):
    L, B = x.shape[1], x.shape[2]
    for r in range(lo, hi):
        a = r // B
        b = r - a * B
        m = x[a, 0, b]
        for i in range(1, L):
            if x[a, i, b] > m:
                m = x[a, i, b]
        s = 0.0
        if log:
            for i in range(L):
                s += np.exp(x[a, i, b] - m)
            log_s = np.log(s)
            for i in range(L):
                out[a, i, b] = (x[a, i, b] - m) - log_s
        else:
            for i in range(L):
                e = np.exp(x[a, i, b] - m)
                out[a, i, b] = e
                s += e
            inv = 1.0 / s
            for i in range(L):
                out[a, i, b] *= inv


@njit(cache=True, parallel=True)
def _forward_parallel(x, out, log, chunks):
    n = x.shape[0] * x.shape[2]
    for c in prange(chunks):
        _forward_span(x, out, log, c * n // chunks, (c + 1) * n // chunks)


@njit(cache=True)
def _backward_span(dout, y, dx, log, lo, hi):
    L, B = y.shape[1], y.shape[2]
    for r in range(lo, hi):
        a = r // B
        b = r - a * B
        s = 0.0
        if log:
            for i in range(L):
                s += dout[a, i, b]
            for i in range(L):
                dx[a, i, b] = dout[a, i, b] - np.exp(y[a, i, b]) * s
        else:
            for i in range(L):
                s += dout[a, i, b] * y[a, i, b]
            for i in range(L):
                dx[a, i, b] = y[a, i, b] * (dout[a, i, b] - s)


@njit(cache=True, parallel=True)
def _backward_parallel(dout, y, dx, log, chunks):
    n = y.shape[0] * y.shape[2]
    for c in prange(chunks):
        _backward_span(dout, y, dx, log, c * n // chunks, (c + 1) * n // chunks)


def _line_shape(shape, dim):
    """(A, L, B): the axes before ``dim`` merged, ``dim`` itself, the axes after merged."""
    return math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1:])


def _forward(x, dim, log):
    dim = dim % x.ndim
    A, L, B = _line_shape(x.shape, dim)
    out = np.empty(x.shape, dtype=x.dtype)
    if x.size:
        # a NaN in a line makes the whole line NaN, whichever element the max comes from
        launch(_forward_span, _forward_parallel, A * B, x.size * 3,
               np.ascontiguousarray(x).reshape(A, L, B), out.reshape(A, L, B), log)
    return out, (out, dim)


def _backward(dout, cache, log):
    y, dim = cache
    A, L, B = _line_shape(y.shape, dim)
    dx = np.empty(y.shape, dtype=dout.dtype)
    if y.size:
        launch(_backward_span, _backward_parallel, A * B, y.size * 2,
               np.ascontiguousarray(dout).reshape(A, L, B),
               np.ascontiguousarray(y).reshape(A, L, B), dx.reshape(A, L, B), log)
    return dx


def softmax_forward(x, dim):
    """exp(x - max) / sum(exp(x - max)) along ``dim``. x: any shape. Returns (out, cache)."""
    return _forward(x, dim, False)


def softmax_backward(dout, cache):
    """dx = y·(dout - Σ dout·y) along dim (y the softmax output). Returns dx: shape of x."""
    return _backward(dout, cache, False)


def log_softmax_forward(x, dim):
    """(x - max) - log(sum(exp(x - max))) along ``dim``. x: any shape. Returns (out, cache)."""
    return _forward(x, dim, True)


def log_softmax_backward(dout, cache):
    """dx = dout - exp(y)·Σ dout along dim (y the log-softmax output). Returns dx: shape of x."""
    return _backward(dout, cache, True)
