"""Fully connected layer, the readable specification: out = x·wᵀ + b."""
__all__ = ["linear_forward", "linear_backward"]


def linear_forward(x, w, b):
    """x: (N, in), w: (out, in), b: (out,) or None. Returns out (N, out) and a cache."""
    out = x @ w.T
    if b is not None:
        out += b
    return out, (x, w, b)


def linear_backward(dout, cache, input_grad=True):
    """dout: (N, out). Returns dx (N, in), dw (out, in), db (out,) or None when b is None.

    input_grad False: dx is not computed and returned as None.
    """
    x, w, b = cache
    dx = dout @ w if input_grad else None
    dw = dout.T @ x
    db = dout.sum(axis=0) if b is not None else None
    return dx, dw, db
