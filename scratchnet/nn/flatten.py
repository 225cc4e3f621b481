"""``Flatten``: merge a range of axes into one (backward restores the input's shape)."""
import math

import numpy as np

from .activation import grad_output
from .module import Module

__all__ = ["Flatten"]


def _wrap_dim(layer, name, dim, ndim):
    """``dim`` in [0, ndim) (a 0-d input counts as 1-d, as in torch); IndexError otherwise."""
    rank = max(ndim, 1)
    if not -rank <= dim < rank:
        raise IndexError(f"{layer}: {name}={dim} is out of range for a {ndim}-d input "
                         f"(expected in [{-rank}, {rank - 1}])")
    return dim % rank


class Flatten(Module):
    """``Flatten(start_dim=1, end_dim=-1)``: (N, C, H, W) -> (N, C·H·W) by default."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim = start_dim
        self.end_dim = end_dim

    def forward(self, x):
        x = np.asarray(x)
        start = _wrap_dim("Flatten", "start_dim", self.start_dim, x.ndim)
        end = _wrap_dim("Flatten", "end_dim", self.end_dim, x.ndim)
        if start > end:
            raise ValueError(f"Flatten: start_dim={self.start_dim} comes after "
                             f"end_dim={self.end_dim} for a {x.ndim}-d input")
        shape = x.shape if x.ndim else (1,)
        merged = math.prod(shape[start:end + 1])
        out = x.reshape(shape[:start] + (merged,) + shape[end + 1:])
        self._in_shape = x.shape
        self._out_shape, self._out_dtype = out.shape, out.dtype
        return out

    def backward(self, dout):
        dout = grad_output("Flatten", dout, self._out_shape, self._out_dtype)
        return dout.reshape(self._in_shape)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
