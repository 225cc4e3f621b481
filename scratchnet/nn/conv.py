"""``Conv2d``: torch.nn.Conv2d's arguments, defaults, initialisation and input checks."""
import math

import numpy as np

from .. import backend
from . import init
from .module import FLOAT_DTYPES, Module
from .parameter import Parameter

__all__ = ["Conv2d"]

_PADDING_STRINGS = ("valid", "same")
_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _pair(value, name, minimum):
    """``value`` as a pair of ints (an int is repeated), each at least ``minimum``."""
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) for v in pair):
        raise ValueError(f"Conv2d: {name} must be an int or a pair of ints, got {value!r}")
    if any(v < minimum for v in pair):
        raise ValueError(f"Conv2d: {name} must be >= {minimum}, got {value!r}")
    return tuple(int(v) for v in pair)


class Conv2d(Module):
    """2-D convolution (cross-correlation) over an (N, C_in, H, W) or (C_in, H, W) input.

    ``out[n, f] = bias[f] + Σ_c weight[f, c] ⋆ x[n, group(f)·C_in/groups + c]``, with
    OH = (H + pad_top + pad_bottom - dilation[0]·(kernel_size[0]-1) - 1) // stride[0] + 1.

    Arguments as torch.nn.Conv2d: ``kernel_size``, ``stride``, ``dilation`` an int or a pair;
    ``padding`` an int, a pair, ``"valid"`` (none) or ``"same"`` (output size = input size;
    stride 1 only; for an even ``dilation·(kernel-1)`` total the extra row/column goes to the
    bottom/right, as torch does). Only ``padding_mode="zeros"`` is implemented.
    ``dtype`` (default float32) picks the parameters' dtype; inputs must match it.

    Attributes: ``weight`` (C_out, C_in/groups, KH, KW) and ``bias`` (C_out,) or None, drawn
    as torch does: kaiming_uniform(a=√5), i.e. U(±1/√fan_in), for both.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", dtype=None):
        super().__init__()
        dtype = np.dtype(np.float32 if dtype is None else dtype)
        if dtype.type not in FLOAT_DTYPES:
            raise TypeError(f"Conv2d: dtype must be float32 or float64, got {dtype}")
        self._configure(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                        padding_mode)
        shape = (self.out_channels, self.in_channels // self.groups) + self.kernel_size
        self.weight = Parameter(init.kaiming_uniform(shape, a=math.sqrt(5), dtype=dtype))
        if bias:
            fan_in = init.calculate_fan_in(shape)
            self.bias = Parameter(init.bias_uniform((self.out_channels,), fan_in, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_weights(cls, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        """A Conv2d over the given ``weight`` (C_out, C_in/groups, KH, KW) and ``bias``
        (C_out,) or None, each a Parameter (gradients add into it) or an array (a constant);
        what ``functional.conv2d`` runs. Draws no random numbers."""
        layer = cls.__new__(cls)
        Module.__init__(layer)
        weight = weight if isinstance(weight, Parameter) else Parameter(np.asarray(weight))
        if weight.data.ndim != 4 or weight.data.dtype.type not in FLOAT_DTYPES:
            raise ValueError(f"conv2d: expected a float32/float64 weight of shape (C_out, "
                             f"C_in/groups, KH, KW), got {weight.data.dtype} {weight.data.shape}")
        c_out, c_in, kh, kw = weight.data.shape
        layer._configure(c_in * groups, c_out, (kh, kw), stride, padding, dilation, groups,
                         "zeros")
        layer.weight = weight
        if bias is None:
            layer.register_parameter("bias", None)
        else:
            bias = bias if isinstance(bias, Parameter) else Parameter(np.asarray(bias))
            if bias.data.shape != (c_out,):
                raise ValueError(f"conv2d: expected bias of shape ({c_out},), got "
                                 f"{bias.data.shape}")
            layer.bias = bias
        return layer

    def _configure(self, in_channels, out_channels, kernel_size, stride, padding, dilation,
                   groups, padding_mode):
        """Check and store the geometry arguments (everything but the parameters)."""
        if not isinstance(groups, (int, np.integer)) or groups <= 0:
            raise ValueError(f"Conv2d: groups must be a positive integer, got {groups!r}")
        if in_channels % groups != 0:
            raise ValueError(f"Conv2d: in_channels must be divisible by groups, got "
                             f"in_channels={in_channels}, groups={groups}")
        if out_channels % groups != 0:
            raise ValueError(f"Conv2d: out_channels must be divisible by groups, got "
                             f"out_channels={out_channels}, groups={groups}")
        if isinstance(padding, str):
            if padding not in _PADDING_STRINGS:
                raise ValueError(f"Conv2d: invalid padding string {padding!r}, should be one "
                                 f"of {_PADDING_STRINGS}")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"Conv2d: padding_mode must be one of {_PADDING_MODES}, "
                             f"but got padding_mode={padding_mode!r}")
        if padding_mode != "zeros":
            raise NotImplementedError(
                f"Conv2d: padding_mode={padding_mode!r} is not implemented; only 'zeros' is")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.dilation = _pair(dilation, "dilation", 1)
        self.groups = int(groups)
        self.padding_mode = padding_mode
        if isinstance(padding, str):
            if padding == "same" and self.stride != (1, 1):
                raise ValueError(f"Conv2d: padding='same' is not supported for strided "
                                 f"convolutions, got stride={self.stride}")
            self.padding = padding
        else:
            self.padding = _pair(padding, "padding", 0)
        self._padding_tblr = self._explicit_padding()
        self._cache = None
        self._backend = None
        self._out_shape = None
        self._unbatched = False

    def _explicit_padding(self):
        """(top, bottom, left, right) for the op; "same" splits the total as torch does."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":
            pads = []
            for d, k in zip(self.dilation, self.kernel_size):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            return tuple(pads)
        (ph, pw) = self.padding
        return (ph, ph, pw, pw)

    def _check_input(self, x):
        if x.ndim not in (3, 4):
            raise ValueError(f"Conv2d: expected 3D (unbatched) or 4D (batched) input, "
                             f"but got input of shape {x.shape}")
        if x.dtype != self.weight.data.dtype:
            raise TypeError(f"Conv2d: input dtype {x.dtype} does not match weight dtype "
                            f"{self.weight.data.dtype}")
        channels = x.shape[-3]
        if channels != self.in_channels:
            raise ValueError(
                f"Conv2d: given groups={self.groups}, weight of size {self.weight.data.shape}, "
                f"expected input {x.shape} to have {self.in_channels} channels, "
                f"but got {channels} channels instead")
        top, bottom, left, right = self._padding_tblr
        padded = (x.shape[-2] + top + bottom, x.shape[-1] + left + right)
        span = tuple(d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel_size))
        if padded[0] < span[0] or padded[1] < span[1]:
            raise ValueError(
                f"Conv2d: calculated padded input size per channel: ({padded[0]} x {padded[1]}). "
                f"Kernel size: ({span[0]} x {span[1]}). "
                f"Kernel size can't be greater than actual input size")

    def forward(self, x):
        """x (N, C_in, H, W) or (C_in, H, W) -> (N, C_out, OH, OW) or (C_out, OH, OW)."""
        x = np.asarray(x)
        self._check_input(x)
        self._unbatched = x.ndim == 3
        if self._unbatched:
            x = x[None]
        b = self.bias.data if self.bias is not None else None
        # the cache's layout belongs to the backend that made it: backward must use the same one
        self._backend = backend.get_backend()
        out, self._cache = backend.ops(self._backend).conv2d_forward(
            x, self.weight.data, b, self.stride, self._padding_tblr, self.dilation, self.groups)
        self._out_shape = out.shape
        return out[0] if self._unbatched else out

    skips_input_grad = True

    def backward(self, dout, input_grad=True):
        """dout shaped like the last output -> dx shaped like the last input (None when
        ``input_grad`` is False: dx is then not computed).

        Adds the weight and bias gradients into ``weight.grad`` / ``bias.grad``.
        """
        if self._cache is None:
            raise RuntimeError("Conv2d: backward called before forward")
        dout = np.asarray(dout, dtype=self.weight.data.dtype)
        expected = self._out_shape[1:] if self._unbatched else self._out_shape
        if dout.shape != tuple(expected):
            raise ValueError(f"Conv2d: expected gradient of shape {tuple(expected)}, "
                             f"got {dout.shape}")
        if self._unbatched:
            dout = dout[None]
        dx, dw, db = backend.ops(self._backend).conv2d_backward(dout, self._cache, input_grad)
        self.weight.accumulate_grad(dw, fresh=True)
        if self.bias is not None:
            self.bias.accumulate_grad(db, fresh=True)
        if dx is None:
            return None
        return dx[0] if self._unbatched else dx

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s
