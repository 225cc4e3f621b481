"""Fused op pairs: the specification is simply the composition of the single ops.

The numba backend runs each of these as one parallel pass over the batch (see
numba_backend/fused.py); here they are written as the chain of the readable ops they replace,
so a fused kernel is tested against exactly the arithmetic of the unfused layers.

ReLU and max pooling commute exactly, gradient included (max is monotone; a window whose max is
<= 0 passes no gradient either way), so one op serves both ``conv -> relu -> pool`` and
``conv -> pool -> relu``.
"""
from .activation import leaky_relu_backward, leaky_relu_forward, relu_backward, relu_forward
from .conv import conv2d_backward, conv2d_forward
from .linear import linear_backward, linear_forward
from .pool import maxpool2d_backward, maxpool2d_forward

__all__ = ["conv2d_relu_forward", "conv2d_relu_backward",
           "conv2d_relu_maxpool2d_forward", "conv2d_relu_maxpool2d_backward",
           "linear_relu_forward", "linear_relu_backward",
           "linear_leaky_relu_forward", "linear_leaky_relu_backward"]


def conv2d_relu_forward(x, w, b, stride, padding, dilation, groups):
    """relu(conv2d(x)). Arguments as conv2d_forward. Returns (out, cache)."""
    y, conv_cache = conv2d_forward(x, w, b, stride, padding, dilation, groups)
    out, relu_cache = relu_forward(y)
    return out, (conv_cache, relu_cache)


def conv2d_relu_backward(dout, cache, input_grad=True):
    """Returns (dx, dw, db) as conv2d_backward (dx None without input_grad)."""
    conv_cache, relu_cache = cache
    return conv2d_backward(relu_backward(dout, relu_cache), conv_cache, input_grad)


def conv2d_relu_maxpool2d_forward(x, w, b, stride, padding, dilation, groups,
                                  kernel_size, pool_stride, pool_padding, pool_dilation,
                                  ceil_mode):
    """maxpool2d(relu(conv2d(x))) (== relu(maxpool2d(conv2d(x)))).

    Convolution arguments as conv2d_forward, then the pool's as maxpool2d_forward.
    Returns (out, cache); out (N, F, PH, PW).
    """
    y, conv_cache = conv2d_forward(x, w, b, stride, padding, dilation, groups)
    r, relu_cache = relu_forward(y)
    out, pool_cache = maxpool2d_forward(r, kernel_size, pool_stride, pool_padding,
                                        pool_dilation, ceil_mode)
    return out, (conv_cache, relu_cache, pool_cache)


def conv2d_relu_maxpool2d_backward(dout, cache, input_grad=True):
    """dout (N, F, PH, PW). Returns (dx, dw, db) as conv2d_backward (dx None without
    input_grad)."""
    conv_cache, relu_cache, pool_cache = cache
    dr = maxpool2d_backward(dout, pool_cache)
    return conv2d_backward(relu_backward(dr, relu_cache), conv_cache, input_grad)


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
