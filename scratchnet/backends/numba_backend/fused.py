"""Fused op pairs (numpy twin: numpy_backend/fused.py): the chain of single ops, ReLU folded in.

    conv2d_relu = relu(conv2d(x))        conv2d_relu_maxpool2d = maxpool2d(relu(conv2d(x)))
    linear_relu = relu(linear(x))        linear_leaky_relu = leaky_relu(linear(x))

The ReLU runs inside the convolution's bias kernel (and its gradient inside the kernel that
gathers dout for the GEMMs), so a fused layer makes one pass less over its output. ReLU and max
pooling commute exactly, gradient included, so one op serves both orders.
"""
import numpy as np

from . import conv
from .activation import leaky_relu_backward, leaky_relu_forward, relu_backward, relu_forward
from .linear import linear_backward, linear_forward
from .pool import maxpool2d_backward, maxpool2d_forward

__all__ = ["conv2d_relu_forward", "conv2d_relu_backward",
           "conv2d_relu_maxpool2d_forward", "conv2d_relu_maxpool2d_backward",
           "linear_relu_forward", "linear_relu_backward",
           "linear_leaky_relu_forward", "linear_leaky_relu_backward"]


def _conv_relu(x, w, b, stride, padding, dilation, groups):
    x = np.ascontiguousarray(x)
    w = np.ascontiguousarray(w, dtype=x.dtype)
    g = conv.geometry(x.shape, w.shape, stride, padding, dilation, groups)
    out = conv.forward(x, w, b, g, True)
    return out, (x, w, b is not None, g, out)


def _conv_relu_backward(dout, cache, input_grad):
    x, w, has_bias, g, out = cache
    return conv.backward(dout, x, w, g, has_bias, out, input_grad)


def conv2d_relu_forward(x, w, b, stride, padding, dilation, groups, workspace=None):
    """relu(conv2d(x)). Arguments as conv2d_forward. Returns (out, cache).

    workspace: accepted for the layers' signature; unused.
    """
    return _conv_relu(x, w, b, stride, padding, dilation, groups)


def conv2d_relu_backward(dout, cache, input_grad=True):
    """Returns (dx, dw, db) as conv2d_backward (dx None without input_grad)."""
    return _conv_relu_backward(dout, cache, input_grad)


def conv2d_relu_maxpool2d_forward(x, w, b, stride, padding, dilation, groups,
                                  kernel_size, pool_stride, pool_padding, pool_dilation,
                                  ceil_mode, workspace=None):
    """maxpool2d(relu(conv2d(x))) (== relu(maxpool2d(conv2d(x)))).

    Convolution arguments as conv2d_forward, then the pool's as maxpool2d_forward; workspace
    as conv2d_relu_forward. Returns (out, cache); out (N, F, PH, PW).
    """
    r, conv_cache = _conv_relu(x, w, b, stride, padding, dilation, groups)
    out, pool_cache = maxpool2d_forward(r, kernel_size, pool_stride, pool_padding,
                                        pool_dilation, ceil_mode)
    return out, (conv_cache, pool_cache)


def conv2d_relu_maxpool2d_backward(dout, cache, input_grad=True):
    """dout (N, F, PH, PW). Returns (dx, dw, db) as conv2d_backward (dx None without
    input_grad)."""
    conv_cache, pool_cache = cache
    return _conv_relu_backward(maxpool2d_backward(dout, pool_cache), conv_cache, input_grad)


def linear_relu_forward(x, w, b):
    """relu(x·wᵀ + b). Arguments as linear_forward. Returns (out, cache)."""
    y, linear_cache = linear_forward(x, w, b)
    out, relu_cache = relu_forward(y)
    return out, (linear_cache, relu_cache)


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
