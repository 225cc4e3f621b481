"""Fused op pairs (numpy twin: numpy_backend/fused.py): the chain of single ops, ReLU folded in.

    conv2d_relu = relu(conv2d(x))        conv2d_relu_maxpool2d = maxpool2d(relu(conv2d(x)))
    linear_relu = relu(linear(x))        linear_leaky_relu = leaky_relu(linear(x))

The convolution's per-sample kernel applies the ReLU and the pool while the sample's output is
in cache, and its backward scatters the pooled gradient there (conv.py); the linear layer's
kernel applies the ReLU to each block it computes (linear.py). ReLU and max pooling
commute exactly, gradient included, so one op serves both orders.
"""
import numpy as np

from ..shapes import pool_output_size
from . import conv
from .activation import leaky_relu_backward, leaky_relu_forward, relu_backward
from .linear import linear_backward, linear_forward
from .pool import Window

__all__ = ["conv2d_relu_forward", "conv2d_relu_backward",
           "conv2d_relu_maxpool2d_forward", "conv2d_relu_maxpool2d_backward",
           "linear_relu_forward", "linear_relu_backward",
           "linear_leaky_relu_forward", "linear_leaky_relu_backward"]


def _conv_relu(x, w, b, stride, padding, dilation, groups, pool_args=None):
    """relu(conv2d(x)), max-pooled when pool_args holds maxpool2d_forward's arguments."""
    x = np.ascontiguousarray(x)
    w = np.ascontiguousarray(w, dtype=x.dtype)
    g = conv.geometry(x.shape, w.shape, stride, padding, dilation, groups)
    pooling = None
    if pool_args is not None:
        (KH, KW), (SH, SW), (PH, PW), (DH, DW), ceil_mode = pool_args
        pooling = (Window(KH, KW, SH, SW, PH, PW, DH, DW),
                   pool_output_size(g.OH, KH, SH, PH, DH, ceil_mode),
                   pool_output_size(g.OW, KW, SW, PW, DW, ceil_mode))
    out, index = conv.forward(x, w, b, g, True, pooling)
    return out, (x, w, b is not None, g, out, index if pooling else None)


def _conv_relu_backward(dout, cache, input_grad):
    x, w, has_bias, g, out, index = cache
    return conv.backward(dout, x, w, g, has_bias, out, index, input_grad)


def conv2d_relu_forward(x, w, b, stride, padding, dilation, groups):
    """relu(conv2d(x)). Arguments as conv2d_forward. Returns (out, cache)."""
    return _conv_relu(x, w, b, stride, padding, dilation, groups)


def conv2d_relu_backward(dout, cache, input_grad=True):
    """Returns (dx, dw, db) as conv2d_backward (dx None without input_grad)."""
    return _conv_relu_backward(dout, cache, input_grad)


def conv2d_relu_maxpool2d_forward(x, w, b, stride, padding, dilation, groups,
                                  kernel_size, pool_stride, pool_padding, pool_dilation,
                                  ceil_mode):
    """maxpool2d(relu(conv2d(x))) (== relu(maxpool2d(conv2d(x)))).

    Convolution arguments as conv2d_forward, then the pool's as maxpool2d_forward. Returns
    (out, cache); out (N, F, PH, PW).
    """
    return _conv_relu(x, w, b, stride, padding, dilation, groups,
                      (kernel_size, pool_stride, pool_padding, pool_dilation, ceil_mode))


def conv2d_relu_maxpool2d_backward(dout, cache, input_grad=True):
    """dout (N, F, PH, PW). Returns (dx, dw, db) as conv2d_backward (dx None without
    input_grad)."""
    return _conv_relu_backward(dout, cache, input_grad)


def linear_relu_forward(x, w, b):
    """relu(x·wᵀ + b). Arguments as linear_forward. Returns (out, cache)."""
    out, linear_cache = linear_forward(x, w, b, relu=True)
    # relu_backward's mask: out > 0 exactly where x·wᵀ + b > 0
    return out, (linear_cache, out)


def linear_relu_backward(dout, cache, input_grad=True):
    """Returns (dx, dw, db) as linear_backward (dx None without input_grad)."""
    linear_cache, relu_cache = cache
    return linear_backward(relu_backward(dout, relu_cache), linear_cache, input_grad)


def linear_leaky_relu_forward(x, w, b, negative_slope):
    """leaky_relu(x·wᵀ + b, negative_slope). Arguments as linear_forward. Returns (out, cache)."""
    y, linear_cache = linear_forward(x, w, b)
    out, act_cache = leaky_relu_forward(y, negative_slope)
    return out, (linear_cache, act_cache)


def linear_leaky_relu_backward(dout, cache, input_grad=True):
    """Returns (dx, dw, db) as linear_backward (dx None without input_grad)."""
    linear_cache, act_cache = cache
    return linear_backward(leaky_relu_backward(dout, act_cache), linear_cache, input_grad)
