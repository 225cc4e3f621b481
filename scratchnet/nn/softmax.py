"""``Softmax`` and ``LogSoftmax`` along one axis, with torch's implicit-axis rule for dim=None."""
import warnings

from .. import backend
from .activation import float_input, grad_output
from .module import Module

__all__ = ["Softmax", "LogSoftmax"]


def _resolve_dim(layer, dim, ndim):
    """The axis to normalise, in [0, max(ndim, 1)); torch's legacy choice when ``dim`` is None."""
    if dim is None:
        name = "softmax" if layer == "Softmax" else "log_softmax"
        warnings.warn(f"Implicit dimension choice for {name} has been deprecated. Change the "
                      "call to include dim=X as an argument.", UserWarning, stacklevel=4)
        return 0 if ndim in (0, 1, 3) else 1
    rank = max(ndim, 1)
    if not -rank <= dim < rank:
        raise IndexError(f"{layer}: dim={dim} is out of range for a {ndim}-d input "
                         f"(expected in [{-rank}, {rank - 1}])")
    return dim % rank


class _SoftmaxBase(Module):
    _name = ""

    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def _ops(self, ops):
        """(forward, backward) op pair from the backend module ``ops``."""
        raise NotImplementedError

    def forward(self, x):
        x = float_input(self._name, x)
        dim = _resolve_dim(self._name, self.dim, x.ndim)
        # the cache belongs to the backend that made it: backward uses the same one
        self._backend = backend.get_backend()
        forward, _ = self._ops(backend.ops(self._backend))
        # a 0-d input is a single-element line, as in torch
        out, self._cache = forward(x.reshape(x.shape or (1,)), dim)
        out = out.reshape(x.shape)
        self._out_shape, self._out_dtype = out.shape, out.dtype
        return out

    def backward(self, dout):
        dout = grad_output(self._name, dout, self._out_shape, self._out_dtype)
        _, backward = self._ops(backend.ops(self._backend))
        return backward(dout.reshape(dout.shape or (1,)), self._cache).reshape(dout.shape)

    def extra_repr(self):
        return f"dim={self.dim}"


class Softmax(_SoftmaxBase):
    """``Softmax(dim=None)``: exp(x - max) / Σ exp(x - max) along ``dim``; input any shape.

    dim None uses torch's legacy rule (0 for 0-, 1- and 3-d inputs, else 1) and warns.
    """

    _name = "Softmax"

    def _ops(self, ops):
        return ops.softmax_forward, ops.softmax_backward


class LogSoftmax(_SoftmaxBase):
    """``LogSoftmax(dim=None)``: (x - max) - log Σ exp(x - max) along ``dim``; input any shape.

    dim None uses torch's legacy rule (0 for 0-, 1- and 3-d inputs, else 1) and warns.
    """

    _name = "LogSoftmax"

    def _ops(self, ops):
        return ops.log_softmax_forward, ops.log_softmax_backward
