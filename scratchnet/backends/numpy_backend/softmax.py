"""Softmax and log-softmax along any axis, the readable specification (the max is subtracted)."""
import numpy as np

__all__ = ["softmax_forward", "softmax_backward", "log_softmax_forward", "log_softmax_backward"]


def softmax_forward(x, dim):
    """exp(x - max) / sum(exp(x - max)) along ``dim``. x: any shape. Returns (out, cache)."""
    if x.size == 0:
        out = x.copy()
        return out, (out, dim)
    e = np.exp(x - x.max(axis=dim, keepdims=True))
    out = e / e.sum(axis=dim, keepdims=True)
    return out, (out, dim)


def softmax_backward(dout, cache):
    """dx = y·(dout - Σ dout·y) along dim (y the softmax output). Returns dx: shape of x."""
    y, dim = cache
    if y.size == 0:
        return dout.copy()
    return y * (dout - (dout * y).sum(axis=dim, keepdims=True))


def log_softmax_forward(x, dim):
    """(x - max) - log(sum(exp(x - max))) along ``dim``. x: any shape. Returns (out, cache)."""
    if x.size == 0:
        out = x.copy()
        return out, (out, dim)
    shifted = x - x.max(axis=dim, keepdims=True)
    out = shifted - np.log(np.exp(shifted).sum(axis=dim, keepdims=True))
    return out, (out, dim)


def log_softmax_backward(dout, cache):
    """dx = dout - exp(y)·Σ dout along dim (y the log-softmax output). Returns dx: shape of x."""
    y, dim = cache
    if y.size == 0:
        return dout.copy()
    return dout - np.exp(y) * dout.sum(axis=dim, keepdims=True)
