"""``ReLU`` and ``LeakyReLU`` with torch.nn's arguments, plus the input checks layers share."""
import numpy as np

from .. import backend
from .module import FLOAT_DTYPES, Module

__all__ = ["ReLU", "LeakyReLU"]


def check_float_input(layer, x):
    """Raise TypeError unless ``x`` is a float32/float64 ndarray; ``layer`` names the caller."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{layer}: expected a numpy.ndarray input, got {type(x).__name__}")
    if x.dtype.type not in FLOAT_DTYPES:
        raise TypeError(f"{layer}: expected a float32 or float64 input, got dtype {x.dtype}")


def check_dout(layer, dout, shape, dtype):
    """Raise unless ``dout`` matches the last forward's output ``shape`` and ``dtype``."""
    if shape is None:
        raise RuntimeError(f"{layer}: backward called before forward")
    if not isinstance(dout, np.ndarray):
        raise TypeError(f"{layer}.backward: expected a numpy.ndarray dout, got "
                        f"{type(dout).__name__}")
    if dout.shape != shape:
        raise ValueError(f"{layer}.backward: expected dout of shape {shape} (the forward "
                         f"output's), got {dout.shape}")
    if dout.dtype != dtype:
        raise TypeError(f"{layer}.backward: expected dout of dtype {dtype}, got {dout.dtype}")


class ReLU(Module):
    """``ReLU(inplace=False)``: max(x, 0), elementwise; gradient 0 at x == 0 as in torch.

    Input: any shape. ``inplace=True`` writes the result into the input array and returns it.
    """

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace
        self._cache = None
        self._out_shape = self._out_dtype = None

    def forward(self, x):
        check_float_input("ReLU", x)
        out, self._cache = backend.ops().relu_forward(x)
        self._out_shape, self._out_dtype = out.shape, out.dtype
        if self.inplace:
            # the cache may hold x itself; relu(x) <= 0 exactly where x <= 0, so the gradient
            # mask survives the overwrite
            x[...] = out
            return x
        return out

    def backward(self, dout):
        check_dout("ReLU", dout, self._out_shape, self._out_dtype)
        return backend.ops().relu_backward(dout, self._cache)

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class LeakyReLU(Module):
    """``LeakyReLU(negative_slope=0.01, inplace=False)``: x if x > 0 else negative_slope·x.

    Input: any shape. At x == 0 the gradient is ``negative_slope``, as in torch.
    """

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        self.negative_slope = negative_slope
        self.inplace = inplace
        self._cache = None
        self._out_shape = self._out_dtype = None
        self._overwrote_negative = False

    def forward(self, x):
        check_float_input("LeakyReLU", x)
        out, self._cache = backend.ops().leaky_relu_forward(x, self.negative_slope)
        self._out_shape, self._out_dtype = out.shape, out.dtype
        self._overwrote_negative = False
        if self.inplace:
            # with a negative slope the output's sign no longer tells where x > 0
            self._overwrote_negative = self.negative_slope < 0
            x[...] = out
            return x
        return out

    def backward(self, dout):
        check_dout("LeakyReLU", dout, self._out_shape, self._out_dtype)
        if self._overwrote_negative:
            raise RuntimeError(
                "LeakyReLU: in-place forward with a negative slope overwrote the input its "
                f"backward needs (negative_slope={self.negative_slope}); use inplace=False")
        return backend.ops().leaky_relu_backward(dout, self._cache)

    def extra_repr(self):
        inplace = ", inplace=True" if self.inplace else ""
        return f"negative_slope={self.negative_slope}{inplace}"
