"""``MaxPool2d`` with torch.nn's arguments, for (N, C, H, W) or unbatched (C, H, W) input."""
import operator

from .. import backend
from ..backends.numpy_backend.pool import pool_output_size
from .activation import float_input, grad_output
from .module import Module

__all__ = ["MaxPool2d"]


def _pair(name, value):
    """An int or a 2-sequence of ints as a tuple (h, w); ValueError naming ``name`` otherwise."""
    if type(value) is int:  # the common case, without the general path's calls
        return value, value
    try:
        if isinstance(value, (tuple, list)):
            if len(value) != 2:
                raise ValueError
            return operator.index(value[0]), operator.index(value[1])
        v = operator.index(value)
        return v, v
    except (TypeError, ValueError):
        raise ValueError(f"MaxPool2d: {name} must be an int or a pair of ints, "
                         f"got {value!r}") from None


class MaxPool2d(Module):
    """``MaxPool2d(kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
    ceil_mode=False)``: the max of each window, padding counting as -inf.

    Input (N, C, H, W) or (C, H, W); output (N, C, OH, OW) or (C, OH, OW) with torch's size
    formula. ``stride`` defaults to ``kernel_size``; ``padding`` may be at most half the kernel.
    Each output's gradient goes to the one element that won its window (ties: the first in
    row-major order; a NaN always wins), as in torch.
    """

    _batched = True

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False):
        super().__init__()
        if return_indices:
            raise NotImplementedError("MaxPool2d: return_indices=True is not supported; "
                                      "only the pooled output is returned")
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.return_indices = return_indices
        self.ceil_mode = ceil_mode
        self._pairs()

    def _pairs(self):
        k = _pair("kernel_size", self.kernel_size)
        s = _pair("stride", self.stride)
        p = _pair("padding", self.padding)
        d = _pair("dilation", self.dilation)
        for name, pair in (("kernel_size", k), ("stride", s), ("dilation", d)):
            if min(pair) <= 0:
                raise ValueError(f"MaxPool2d: {name} must be positive, got {pair}")
        if min(p) < 0:
            raise ValueError(f"MaxPool2d: padding must be non-negative, got {p}")
        if p[0] > k[0] // 2 or p[1] > k[1] // 2:
            raise ValueError(f"MaxPool2d: padding should be at most half of kernel_size, got "
                             f"padding={p}, kernel_size={k}")
        return k, s, p, d

    def forward(self, x):
        x = float_input("MaxPool2d", x)
        if x.ndim not in (3, 4):
            raise ValueError(f"MaxPool2d: expected a 3-D (C, H, W) or 4-D (N, C, H, W) input, "
                             f"got shape {x.shape}")
        if 0 in x.shape[-3:]:
            raise ValueError(f"MaxPool2d: expected non-zero C, H and W, got shape {x.shape}")
        k, s, p, d = self._pairs()
        H, W = x.shape[-2:]
        OH = pool_output_size(H, k[0], s[0], p[0], d[0], self.ceil_mode)
        OW = pool_output_size(W, k[1], s[1], p[1], d[1], self.ceil_mode)
        if OH < 1 or OW < 1:
            raise ValueError(f"MaxPool2d: input of shape {x.shape} is too small for "
                             f"kernel_size={k}, padding={p}, dilation={d}: calculated output "
                             f"size {OH}x{OW}")
        self._batched = x.ndim == 4
        x4 = x if self._batched else x[None]
        # the cache belongs to the backend that made it: backward uses the same one
        self._backend = backend.get_backend()
        out, self._cache = backend.ops(self._backend).maxpool2d_forward(x4, k, s, p, d,
                                                                        self.ceil_mode)
        if not self._batched:
            out = out[0]
        self._out_shape, self._out_dtype = out.shape, out.dtype
        return out

    def backward(self, dout):
        dout = grad_output("MaxPool2d", dout, self._out_shape, self._out_dtype)
        dx = backend.ops(self._backend).maxpool2d_backward(
            dout if self._batched else dout[None], self._cache)
        return dx if self._batched else dx[0]

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")
