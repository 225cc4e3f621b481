"""Inverted dropout, the readable specification: kept values scaled by 1/(1-p) while training."""
import math

import numpy as np

__all__ = ["dropout_forward", "dropout_backward"]


def draw_keep_mask(shape, p, rng):
    """Bernoulli(1-p) keep mask (bool) from the numpy Generator ``rng``; shared by both backends.

    One 32-bit draw per element whatever the data dtype, so a seed gives the same mask in
    float32 and float64 and in either backend: element i is kept when its draw is below
    (1-p)·2³² (a keep probability within 2⁻³² of 1-p). Why raw 32-bit halves of the
    generator's 64-bit outputs (read little-endian on every platform): a large dropout layer
    draws hundreds of thousands per step, and these are numpy's cheapest draws.
    """
    n = math.prod(shape)
    words = rng.bit_generator.random_raw((n + 1) // 2).astype("<u8", copy=False)
    threshold = min(round((1.0 - p) * 2.0**32), 2**32 - 1)
    return (words.view("<u4")[:n] < np.uint32(threshold)).reshape(shape)


def keep_scale(p, dtype):
    """torch's noise value for kept elements, 1/(1-p) computed in ``dtype`` (0 when p == 1)."""
    dtype = np.dtype(dtype).type
    return dtype(0) if p == 1 else dtype(1) / dtype(1.0 - p)


def dropout_forward(x, p, rng):
    """Zero each element with probability p, scale the rest by 1/(1-p).

    x: any shape; p in [0, 1]; rng: numpy Generator. Returns (out, cache). As torch on CPU:
    p == 0 returns x itself (no draw); p == 1 returns x·0 (no draw, so inf/NaN give NaN).
    """
    if p == 0:
        return x, None
    keep = np.zeros(x.shape, dtype=bool) if p == 1 else draw_keep_mask(x.shape, p, rng)
    scale = keep_scale(p, x.dtype)
    # torch multiplies by a noise tensor, so a dropped inf or NaN becomes NaN, not 0 (and
    # silently, as in torch)
    noise = np.where(keep, scale, x.dtype.type(0))
    with np.errstate(invalid="ignore"):
        out = x * noise
    return out, (keep, scale)


def dropout_backward(dout, cache):
    """The same mask and scale as forward. dout: shape of x. Returns dx: shape of x."""
    if cache is None:
        return dout
    keep, scale = cache
    with np.errstate(invalid="ignore"):
        return dout * np.where(keep, scale, dout.dtype.type(0))
