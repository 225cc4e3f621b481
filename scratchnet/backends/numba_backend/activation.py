"""ReLU and LeakyReLU (numpy twin: numpy_backend/activation.py), elementwise over flat arrays.

    relu(x) = x if not x < 0 else 0            drelu = dout if x > 0 else 0
    leaky(x) = x if x > 0 else slope·x          dleaky = dout if x > 0 else slope·dout

Spans slice their arrays first: a loop over ``range(slice.size)`` lets LLVM drop the
negative-index checks and vectorise.
"""
import numpy as np
from numba import njit, prange

from .common import flat, launch

__all__ = ["relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward"]


@njit(cache=True)
def _relu_span(x, out, lo, hi):
    x, out = x[lo:hi], out[lo:hi]
    for i in range(x.size):
        v = x[i]
        # `v < 0`, not `v > 0`, so NaN passes through as torch's clamp_min does
        if v < 0:
            out[i] = 0
        else:
            out[i] = v


@njit(cache=True, parallel=True)
def _relu_parallel(x, out, chunks):
    n = x.size
    for c in prange(chunks):
        _relu_span(x, out, c * n // chunks, (c + 1) * n // chunks)


@njit(cache=True)
def _relu_backward_span(dout, x, dx, lo, hi):
    dout, x, dx = dout[lo:hi], x[lo:hi], dx[lo:hi]
    for i in range(x.size):
        # torch masks with `out <= 0`: zero gradient at exactly 0, NaN lets it through
        if x[i] <= 0:
            dx[i] = 0
        else:
            dx[i] = dout[i]


@njit(cache=True, parallel=True)
def _relu_backward_parallel(dout, x, dx, chunks):
    n = x.size
    for c in prange(chunks):
        _relu_backward_span(dout, x, dx, c * n // chunks, (c + 1) * n // chunks)


@njit(cache=True)
def _leaky_relu_span(x, slope, out, lo, hi):
    x, out = x[lo:hi], out[lo:hi]
    for i in range(x.size):
        v = x[i]
        if v > 0:
            out[i] = v
        else:
            out[i] = v * slope


@njit(cache=True, parallel=True)
def _leaky_relu_parallel(x, slope, out, chunks):
    n = x.size
    for c in prange(chunks):
        _leaky_relu_span(x, slope, out, c * n // chunks, (c + 1) * n // chunks)


@njit(cache=True)
def _leaky_relu_backward_span(dout, x, slope, dx, lo, hi):
    dout, x, dx = dout[lo:hi], x[lo:hi], dx[lo:hi]
    for i in range(x.size):
        if x[i] > 0:
            dx[i] = dout[i]
        else:
            dx[i] = dout[i] * slope


@njit(cache=True, parallel=True)
def _leaky_relu_backward_parallel(dout, x, slope, dx, chunks):
    n = x.size
    for c in prange(chunks):
        _leaky_relu_backward_span(dout, x, slope, dx, c * n // chunks, (c + 1) * n // chunks)


def relu_forward(x):
    """max(x, 0), NaN passed through (torch's clamp_min). x: any shape. Returns (out, cache)."""
    out = np.empty(x.shape, dtype=x.dtype)
    launch(_relu_span, _relu_parallel, x.size, x.size, flat(x), out.reshape(-1))
    return out, x


def relu_backward(dout, cache):
    """dout where x > 0, else 0 (0 at exactly 0). dout: shape of x. Returns dx: shape of x."""
    x = cache
    dx = np.empty(x.shape, dtype=dout.dtype)
    launch(_relu_backward_span, _relu_backward_parallel, x.size, x.size, flat(dout), flat(x),
           dx.reshape(-1))
    return dx


def leaky_relu_forward(x, negative_slope):
    """x where x > 0, else x·negative_slope. x: any shape. Returns (out, cache)."""
    out = np.empty(x.shape, dtype=x.dtype)
    # the slope in x's dtype, so float32 products round as torch's do
    launch(_leaky_relu_span, _leaky_relu_parallel, x.size, x.size, flat(x),
           x.dtype.type(negative_slope), out.reshape(-1))
    return out, (x, negative_slope)


def leaky_relu_backward(dout, cache):
    """dout where x > 0, else dout·negative_slope (x == 0 gets the slope, as in torch).

    dout: shape of x. Returns dx: shape of x.
    """
    x, negative_slope = cache
    dx = np.empty(x.shape, dtype=dout.dtype)
    launch(_leaky_relu_backward_span, _leaky_relu_backward_parallel, x.size, x.size,
           flat(dout), flat(x), dout.dtype.type(negative_slope), dx.reshape(-1))
    return dx
