"""ReLU and LeakyReLU, the readable specification."""
import numpy as np

__all__ = ["relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward"]


def relu_forward(x):
    """max(x, 0), NaN passed through (torch's clamp_min). x: any shape. Returns (out, cache)."""
    out = np.where(x < 0, 0, x).astype(x.dtype, copy=False)
    return out, x


def relu_backward(dout, cache):
    """dout where x > 0, else 0: the gradient at exactly 0 is 0 (torch: ``out <= 0 ? 0 : g``).

    dout: shape of x. Returns dx: shape of x.
    """
    x = cache
    return np.where(x <= 0, 0, dout).astype(dout.dtype, copy=False)


def leaky_relu_forward(x, negative_slope):
    """x where x > 0, else x·negative_slope. x: any shape. Returns (out, cache)."""
    slope = x.dtype.type(negative_slope)
    return np.where(x > 0, x, x * slope), (x, negative_slope)


def leaky_relu_backward(dout, cache):
    """dout where x > 0, else dout·negative_slope (so x == 0 gets the slope, as in torch).

    dout: shape of x. Returns dx: shape of x.
    """
    x, negative_slope = cache
    slope = dout.dtype.type(negative_slope)
    return np.where(x > 0, dout, dout * slope)
