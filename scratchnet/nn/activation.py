"""``ReLU`` and ``LeakyReLU`` with torch.nn's arguments, plus the input checks layers share."""
import numpy as np

from .. import backend
from .module import FLOAT_DTYPES, Module

__all__ = ["ReLU", "LeakyReLU"]


def float_input(layer, x):
    """``x`` as an ndarray; TypeError naming ``layer`` unless it is float32 or float64."""
    x = np.asarray(x)
    if x.dtype.type not in FLOAT_DTYPES:
        raise TypeError(f"{layer}: expected a float32 or float64 input, got dtype {x.dtype}")
    return x


def grad_output(layer, dout, shape, dtype):
    """``dout`` as an array of the last output's dtype (cast, as torch's autograd does).

    RuntimeError before any forward; ValueError unless ``dout`` has the output's ``shape``.
    """
    if shape is None:
        raise RuntimeError(f"{layer}: backward called before forward")
    dout = np.asarray(dout, dtype=dtype)
    if dout.shape != shape:
        raise ValueError(f"{layer}.backward: expected dout of shape {shape} (the forward "
                         f"output's), got {dout.shape}")
    return dout


class ReLU(Module):
    """``ReLU(inplace=False)``: max(x, 0), elementwise; gradient 0 at x == 0 as in torch.

    Input: any shape. ``inplace=True`` writes the result into the input array and returns it.
    """

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x):
        x = float_input("ReLU", x)
        # the cache belongs to the backend that made it: backward uses the same one
        self._backend = backend.get_backend()
        out, self._cache = backend.ops(self._backend).relu_forward(x)
        self._out_shape, self._out_dtype = out.shape, out.dtype
        if self.inplace:
            # the cache may hold x itself; relu(x) <= 0 exactly where x <= 0, so the gradient
            # mask survives the overwrite
            x[...] = out
            return x
        return out

    def backward(self, dout):
        dout = grad_output("ReLU", dout, self._out_shape, self._out_dtype)
        return backend.ops(self._backend).relu_backward(dout, self._cache)

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class LeakyReLU(Module):
    """``LeakyReLU(negative_slope=0.01, inplace=False)``: x if x > 0 else negative_slope·x.

    Input: any shape. At x == 0 the gradient is ``negative_slope``, as in torch.
    """

    _overwrote_negative = False

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        self.negative_slope = negative_slope
        self.inplace = inplace

    def forward(self, x):
        x = float_input("LeakyReLU", x)
        self._backend = backend.get_backend()
        out, self._cache = backend.ops(self._backend).leaky_relu_forward(x, self.negative_slope)
        self._out_shape, self._out_dtype = out.shape, out.dtype
        self._overwrote_negative = False
        if self.inplace:
            # with a negative slope the output's sign no longer tells where x > 0
            self._overwrote_negative = self.negative_slope < 0
            x[...] = out
            return x
        return out

    def backward(self, dout):
        dout = grad_output("LeakyReLU", dout, self._out_shape, self._out_dtype)
        if self._overwrote_negative:
            raise RuntimeError(
                "LeakyReLU: in-place forward with a negative slope overwrote the input its "
                f"backward needs (negative_slope={self.negative_slope}); use inplace=False")
        return backend.ops(self._backend).leaky_relu_backward(dout, self._cache)

    def extra_repr(self):
        inplace = ", inplace=True" if self.inplace else ""
        return f"negative_slope={self.negative_slope}{inplace}"
