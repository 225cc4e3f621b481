"""Inverted dropout (numpy twin: numpy_backend/dropout.py): out = x·keep/(1-p), dx likewise.

The mask comes from the numpy Generator exactly as in the numpy backend (same seed, same mask);
the kernel multiplies by it in forward and again in backward.
"""
import numpy as np
from numba import njit, prange

from ..numpy_backend.dropout import draw_keep_mask, keep_scale
from .common import flat, launch

__all__ = ["dropout_forward", "dropout_backward"]


@njit(cache=True)
def _apply_mask_span(x, keep, scale, out, lo, hi):
    x, keep, out = x[lo:hi], keep[lo:hi], out[lo:hi]
    zero = scale - scale
    for i in range(x.size):
        # multiply by 0 rather than assign it: torch's x·noise turns a dropped inf/NaN into NaN
        out[i] = x[i] * (scale if keep[i] else zero)


@njit(cache=True, parallel=True)
def _apply_mask_parallel(x, keep, scale, out, chunks):
    n = x.size
    for c in prange(chunks):
        _apply_mask_span(x, keep, scale, out, c * n // chunks, (c + 1) * n // chunks)


def _apply_mask(a, keep, scale):
    out = np.empty(a.shape, dtype=a.dtype)
    # (errstate only matters with the JIT disabled: a dropped inf gives NaN silently, as in torch)
    with np.errstate(invalid="ignore"):
        launch(_apply_mask_span, _apply_mask_parallel, a.size, a.size,
               flat(a), keep.reshape(-1), a.dtype.type(scale),
               out.reshape(-1))
    return out


def dropout_forward(x, p, rng):
    """Zero each element with probability p, scale the rest by 1/(1-p).

    x: any shape; p in [0, 1]; rng: numpy Generator. Returns (out, cache). As torch on CPU:
    p == 0 returns x itself (no draw); p == 1 returns x·0 (no draw, so inf/NaN give NaN).
    """
    if p == 0:
        return x, None
    keep = np.zeros(x.shape, dtype=bool) if p == 1 else draw_keep_mask(x.shape, p, rng)
    scale = keep_scale(p, x.dtype)
    return _apply_mask(x, keep, scale), (keep, scale)


def dropout_backward(dout, cache):
    """The same mask and scale as forward. dout: shape of x. Returns dx: shape of x."""
    if cache is None:
        return dout
    keep, scale = cache
    return _apply_mask(dout, keep, scale)
