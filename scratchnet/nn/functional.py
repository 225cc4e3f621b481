"""``scratchnet.nn.functional``: torch.nn.functional's names and arguments for scratchnet's ops.

Each call runs the layer of the same name (``relu`` -> ``ReLU``), so checks, messages and
numbers are the layer's. Inside a model's forward the call is recorded on the tape
(``tape.py``) and the model's ``backward`` reaches through it; outside one it just computes.
"""
import numpy as np

from . import tape as _tape
from .activation import LeakyReLU, ReLU
from .conv import Conv2d
from .dropout import Dropout
from .flatten import Flatten
from .linear import Linear
from .loss import CrossEntropyLoss, NLLLoss
from .pooling import MaxPool2d
from .softmax import LogSoftmax, Softmax

__all__ = ["relu", "leaky_relu", "max_pool2d", "conv2d", "linear", "dropout", "softmax",
           "log_softmax", "cross_entropy", "nll_loss", "flatten", "add"]


def relu(input, inplace=False):
    """max(input, 0), elementwise; any shape."""
    return ReLU(inplace)(input)


def leaky_relu(input, negative_slope=0.01, inplace=False):
    """input if input > 0 else negative_slope·input, elementwise; any shape."""
    return LeakyReLU(negative_slope, inplace)(input)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """Max over windows of (N, C, H, W) or (C, H, W) input (``stride`` defaults to the kernel)."""
    return MaxPool2d(kernel_size, stride, padding, dilation, return_indices, ceil_mode)(input)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation: input (N, C_in, H, W) or (C_in, H, W), weight (C_out, C_in/groups,
    KH, KW), bias (C_out,) or None. Parameters receive gradients; plain arrays are constants."""
    return Conv2d.from_weights(weight, bias, stride, padding, dilation, groups)(input)


def linear(input, weight, bias=None):
    """input·weightᵀ + bias: input (*, in), weight (out, in), bias (out,) or None."""
    return Linear.from_weights(weight, bias)(input)


def dropout(input, p=0.5, training=True, inplace=False):
    """Inverted dropout when ``training`` (torch's default is True: pass ``self.training``)."""
    layer = Dropout(p, inplace)
    layer.training = bool(training)
    return layer(input)


def softmax(input, dim=None):
    """exp(x - max) / Σ exp(x - max) along ``dim``."""
    return Softmax(dim)(input)


def log_softmax(input, dim=None):
    """(x - max) - log Σ exp(x - max) along ``dim``."""
    return LogSoftmax(dim)(input)


def _no_legacy(name, size_average, reduce):
    if size_average is not None or reduce is not None:
        raise ValueError(f"{name}: size_average and reduce are deprecated in torch and not "
                         f"supported; use reduction='mean' | 'sum' | 'none'")


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100,
                  reduce=None, reduction="mean", label_smoothing=0.0):
    """Cross-entropy of raw scores (N, C) against class indices (N,) or probabilities (N, C)."""
    _no_legacy("cross_entropy", size_average, reduce)
    return CrossEntropyLoss(weight, ignore_index, reduction, label_smoothing)(input, target)


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
             reduction="mean"):
    """Negative log-likelihood of log-probabilities (N, C) at class indices (N,)."""
    _no_legacy("nll_loss", size_average, reduce)
    return NLLLoss(weight, ignore_index, reduction)(input, target)


def flatten(input, start_dim=0, end_dim=-1):
    """Merge axes ``start_dim..end_dim`` into one, as ``torch.flatten`` (default: all of them)."""
    return Flatten(start_dim, end_dim)(input)


class _Add:
    """``input + alpha·other`` with broadcasting; backward sums each gradient to its shape."""

    skips_input_grad = False

    def __init__(self, shapes, alpha):
        self.shapes = shapes
        self.alpha = alpha

    def backward(self, dout):
        return tuple(_scaled_sum_to(dout, shape, scale)
                     for shape, scale in zip(self.shapes, (1, self.alpha)))


def _scaled_sum_to(dout, shape, scale):
    """The gradient of ``scale·x`` for an ``x`` of ``shape`` that broadcasting widened."""
    return _sum_to(dout if scale == 1 else dout * dout.dtype.type(scale), shape)


def _sum_to(g, shape):
    """Sum ``g`` over the axes broadcasting added to reach it from ``shape``."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape)
                                      if n == 1 and g.shape[i + lead] != 1)
    return g.sum(axis=axes).reshape(shape) if axes else g.reshape(shape)


def add(input, other, *, alpha=1):
    """input + alpha·other, as ``torch.add``; where two branches meet (a skip connection)
    their gradients both flow back. Arrays must be float32/float64 of broadcastable shapes."""
    a = input.materialize() if isinstance(input, _tape.Deferred) else input
    b = other.materialize() if isinstance(other, _tape.Deferred) else other
    out = np.add(a, b if alpha == 1 else np.multiply(b, alpha, dtype=np.result_type(b)))
    tape = _tape.active()
    if tape is None:
        return out
    a_tracked, b_tracked = isinstance(a, np.ndarray), isinstance(b, np.ndarray)
    for x, tracked in ((a, a_tracked), (b, b_tracked)):
        if tracked:
            tape.check_input("add", x)
    tape.started = True
    if a_tracked and b_tracked:
        op, inputs = _Add((a.shape, b.shape), alpha), (a, b)
    elif a_tracked:
        op, inputs = _Scaled(a.shape, 1), (a,)
    elif b_tracked:
        op, inputs = _Scaled(b.shape, alpha), (b,)
    else:
        return out
    tape.record(op, inputs, out, has_params=False, skips=False)
    return out


class _Scaled:
    """Backward of ``scalar + alpha·other`` for the one array input."""

    skips_input_grad = False

    def __init__(self, shape, alpha):
        self.shape = shape
        self.alpha = alpha

    def backward(self, dout):
        return _scaled_sum_to(dout, self.shape, self.alpha)
