"""``Linear``: y = x·Wᵀ + b over the last axis, with torch's layout and default initialisation."""
import math
import operator

import numpy as np

from .. import backend
from . import init
from .activation import float_input, grad_output
from .module import Module
from .parameter import Parameter

__all__ = ["Linear"]


class Linear(Module):
    """``Linear(in_features, out_features, bias=True)``: y = x·Wᵀ + b.

    Input (*, in_features), output (*, out_features). ``weight`` (out_features, in_features)
    and ``bias`` (out_features,) start as torch's: kaiming_uniform(a=√5), i.e.
    U(-1/√in_features, 1/√in_features), in float32.
    """

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            try:
                ok = operator.index(value) >= 0
            except TypeError:
                ok = False
            if not ok:
                raise ValueError(f"Linear: {name} must be a non-negative int, got {value!r}")
        self.in_features = operator.index(in_features)
        self.out_features = operator.index(out_features)
        self.weight = Parameter(init.kaiming_uniform((self.out_features, self.in_features),
                                                     a=math.sqrt(5)))
        if bias:
            self.bias = Parameter(init.bias_uniform((self.out_features,),
                                                    fan_in=self.in_features))
        else:
            self.register_parameter("bias", None)
        self._cache = self._backend = None
        self._in_shape = None
        self._out_shape = self._out_dtype = None

    @classmethod
    def from_weights(cls, weight, bias=None):
        """A Linear over the given ``weight`` (out, in) and ``bias`` (out,) or None, each a
        Parameter (gradients add into it) or an array (a constant); what ``functional.linear``
        runs. Draws no random numbers."""
        layer = cls.__new__(cls)
        Module.__init__(layer)
        weight = weight if isinstance(weight, Parameter) else Parameter(np.asarray(weight))
        if weight.data.ndim != 2 or weight.data.dtype.type not in (np.float32, np.float64):
            raise ValueError(f"linear: expected a float32/float64 weight of shape (out, in), "
                             f"got {weight.data.dtype} {weight.data.shape}")
        layer.out_features, layer.in_features = weight.data.shape
        layer.weight = weight
        if bias is None:
            layer.register_parameter("bias", None)
        else:
            bias = bias if isinstance(bias, Parameter) else Parameter(np.asarray(bias))
            if bias.data.shape != (layer.out_features,):
                raise ValueError(f"linear: expected bias of shape ({layer.out_features},), "
                                 f"got {bias.data.shape}")
            layer.bias = bias
        layer._cache = layer._backend = None
        layer._in_shape = None
        layer._out_shape = layer._out_dtype = None
        return layer

    def forward(self, x):
        x = float_input("Linear", x)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear: expected input of shape (*, {self.in_features}), "
                             f"got shape {x.shape}")
        w = self.weight.data
        if x.dtype != w.dtype:
            raise TypeError(f"Linear: input dtype {x.dtype} does not match weight dtype "
                            f"{w.dtype}; cast the input or call .to({x.dtype}) on the model")
        lead = x.shape[:-1]
        rows = math.prod(lead)
        b = self.bias.data if self.bias is not None else None
        # the cache belongs to the backend that made it: backward uses the same one
        self._backend = backend.get_backend()
        out, self._cache = backend.ops(self._backend).linear_forward(
            x.reshape(rows, self.in_features), w, b)
        self._in_shape = x.shape
        out = out.reshape(lead + (self.out_features,))
        self._out_shape, self._out_dtype = out.shape, out.dtype
        return out

    skips_input_grad = True

    def backward(self, dout, input_grad=True):
        """dout (..., out_features) -> dx (..., in_features), or None when ``input_grad`` is
        False (dx not computed). Adds into ``weight.grad`` / ``bias.grad``."""
        dout = grad_output("Linear", dout, self._out_shape, self._out_dtype)
        rows = math.prod(self._in_shape[:-1])
        dx, dw, db = backend.ops(self._backend).linear_backward(
            dout.reshape(rows, self.out_features), self._cache, input_grad)
        self.weight.accumulate_grad(dw, fresh=True)
        if self.bias is not None:
            self.bias.accumulate_grad(db, fresh=True)
        return None if dx is None else dx.reshape(self._in_shape)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")
