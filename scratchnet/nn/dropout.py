"""``Dropout``: inverted dropout while training, identity in eval mode."""
from .. import backend
from .. import random as sn_random
from .activation import float_input, grad_output
from .module import Module

__all__ = ["Dropout"]


class Dropout(Module):
    """``Dropout(p=0.5, inplace=False)``: in training mode, zero each element with probability
    p and scale the rest by 1/(1-p); in eval mode, return the input unchanged.

    Input: any shape. The mask comes from ``scratchnet.random.default_generator()`` (so
    ``manual_seed`` makes it repeatable) and is reused by ``backward``.
    """

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        if p < 0 or p > 1:
            raise ValueError(f"Dropout: dropout probability has to be between 0 and 1, "
                             f"but got {p}")
        self.p = p
        self.inplace = inplace

    def forward(self, x):
        x = float_input("Dropout", x)
        self._out_shape, self._out_dtype = x.shape, x.dtype
        if not self.training:
            self._cache = None
            return x
        self._backend = backend.get_backend()
        out, self._cache = backend.ops(self._backend).dropout_forward(
            x, self.p, sn_random.default_generator())
        if self.inplace and out is not x:
            x[...] = out
            return x
        return out

    def backward(self, dout):
        dout = grad_output("Dropout", dout, self._out_shape, self._out_dtype)
        if self._cache is None:
            return dout
        return backend.ops(self._backend).dropout_backward(dout, self._cache)

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"
