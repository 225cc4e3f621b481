"""Fully connected layer (numpy twin: numpy_backend/linear.py) on numpy's BLAS.

    out = x·wᵀ + b        dx = dout·w        dw = doutᵀ·x        db = Σ_n dout[n]

The products are whole-batch ``np.matmul`` calls from Python: BLAS runs them on its own
threads while Numba's pool is idle, so the two pools never compete.
"""
import numpy as np

__all__ = ["linear_forward", "linear_backward"]


def linear_forward(x, w, b):
    """x: (N, in), w: (out, in), b: (out,) or None. Returns out (N, out) and a cache."""
    out = np.matmul(x, w.T)
    if b is not None:
        out += b
    return out, (x, w, b)


def linear_backward(dout, cache, input_grad=True):
    """dout: (N, out). Returns dx (N, in), dw (out, in), db (out,) or None when b is None.

    input_grad False: dx is not computed and returned as None (half the work of a first layer).
    """
    x, w, b = cache
    dx = np.matmul(dout, w) if input_grad else None
    dw = np.matmul(dout.T, x)
    db = dout.sum(axis=0) if b is not None else None
    return dx, dw, db
