"""Layer fusion: runs of layers that execute as one fused op.

A ``Sequential`` knows its layers up front and runs a plan (:func:`plan`) in which the runs
below are fused steps. In a forward written with calls (a model on the tape, ``tape.py``) the
runs are found as they happen: a ``Conv2d`` or ``Linear`` call is deferred, and the ops
applied to its output extend the run while it matches a prefix of

- ``Conv2d, ReLU, MaxPool2d`` or ``Conv2d, MaxPool2d, ReLU`` -> one conv+bias+ReLU+pool op
  (ReLU and max pooling commute exactly, gradient included),
- ``Conv2d, ReLU`` -> one conv+bias+ReLU op,
- ``Linear, ReLU`` -> one linear+ReLU op,
- ``Linear, LeakyReLU`` -> one linear+LeakyReLU op.

The ReLU and pool may be modules or ``functional`` calls (``F.relu``, ``F.max_pool2d``): both
run as the same layer classes. The run becomes a fused step that calls the fused op pair of the
current backend (``conv2d_relu_maxpool2d``, ``conv2d_relu``, ``linear_relu``,
``linear_leaky_relu``; the numpy backend's versions are the compositions of the single ops, the
numba backend's one parallel pass) on the **same** Parameter objects, so module structure,
state-dict keys and results are unchanged (tests/test_fusion.py checks fused == unfused
exactly). A run cut short by another op runs fused if it is a pattern itself (``Conv2d,
ReLU`` before a Dropout), else layer by layer (``Conv2d, MaxPool2d`` with no ReLU after it).

Why deferred rather than a plan: a forward written with ``F.*`` calls has no list of layers to
plan over, and the fused kernels need the whole run before they start. Deferring each head by
one op costs a small object per Conv2d/Linear call.

Fusion is on by default. Turn it off with the environment variable ``SCRATCHNET_FUSION=0``, or
in code with ``scratchnet.nn.fusion.set_enabled(False)`` or ``with fusion.disabled(): ...``.

What changes for a user: after a fused forward, the individual layers inside a fused run hold
no forward cache, so only the model's backward (the tape) can run their backward. A step falls
back to the plain layer calls for inputs the fused ops don't take (unbatched, empty batch,
wrong dtype), so error messages are the layers' own.
"""
import contextlib

import numpy as np

from .. import backend
from ..backends.numpy_backend.pool import pool_output_size
from ..switches import switched_on
from .activation import LeakyReLU, ReLU, grad_output
from .conv import Conv2d
from .linear import Linear
from .module import backward_steps
from .pooling import MaxPool2d

__all__ = ["plan", "set_enabled", "is_enabled", "disabled"]

_enabled = switched_on("SCRATCHNET_FUSION")


def set_enabled(flag):
    """Turn layer fusion on or off for every model from the next forward on."""
    global _enabled
    _enabled = bool(flag)


def is_enabled():
    return _enabled


@contextlib.contextmanager
def disabled():
    """``with fusion.disabled(): ...`` runs models layer by layer."""
    previous = _enabled
    set_enabled(False)
    try:
        yield
    finally:
        set_enabled(previous)


class _FusedStep:
    """A run of layers executed as one fused op; falls back to the layers for odd inputs."""

    __slots__ = ("layers", "_cache", "_backend", "_fallback", "_out_shape", "_out_dtype",
                 "_main")
    skips_input_grad = True

    def __init__(self, layers):
        self._cache = self._backend = None
        self._fallback = False
        self._out_shape = self._out_dtype = None
        self.rebind(layers)

    def rebind(self, layers):
        """Run over ``layers`` from now on (a functional ReLU or pool is a new layer per call)."""
        self.layers = layers
        self._main = layers[0]

    def _unfused_forward(self, x):
        self._fallback = True
        for layer in self.layers:
            x = layer(x)
        return x

    def backward(self, dout, input_grad=True):
        if self._fallback:
            return backward_steps(self.layers, dout, input_grad)
        last = self.layers[-1]
        dout = grad_output(type(last).__name__, dout, self._out_shape, self._out_dtype)
        dx, dw, db = self._backward_op(dout, input_grad)
        main = self._main
        main.weight.accumulate_grad(dw, fresh=True)
        if main.bias is not None:
            main.bias.accumulate_grad(db, fresh=True)
        return dx

    def _done(self, out, cache, name):
        self._cache = cache
        self._backend = name
        self._fallback = False
        self._out_shape, self._out_dtype = out.shape, out.dtype
        return out


def _conv_ok(conv, x):
    """True when x suits the fused conv path (batched, non-empty, the conv's dtype)."""
    return (isinstance(x, np.ndarray) and x.ndim == 4 and x.shape[0] > 0
            and x.dtype == conv.weight.data.dtype)


class _ConvReluPool(_FusedStep):
    __slots__ = ("_pool",)

    def rebind(self, layers):
        super().rebind(layers)
        self._pool = next(m for m in layers if isinstance(m, MaxPool2d))

    def __call__(self, x):
        conv, pool = self._main, self._pool
        if not _conv_ok(conv, x):
            return self._unfused_forward(x)
        conv._check_input(x)
        k, s, p, d = pool._pairs()
        t, b_, l_, r_ = conv._padding_tblr
        (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
        oh = (x.shape[2] + t + b_ - dh * (kh - 1) - 1) // sh + 1
        ow = (x.shape[3] + l_ + r_ - dw * (kw - 1) - 1) // sw + 1
        if (conv.out_channels == 0
                or pool_output_size(oh, k[0], s[0], p[0], d[0], pool.ceil_mode) < 1
                or pool_output_size(ow, k[1], s[1], p[1], d[1], pool.ceil_mode) < 1):
            # the pool layer's own check raises its error message
            return self._unfused_forward(x)
        name = backend.get_backend()
        b = conv.bias.data if conv.bias is not None else None
        out, cache = backend.ops(name).conv2d_relu_maxpool2d_forward(
            x, conv.weight.data, b, conv.stride, conv._padding_tblr, conv.dilation, conv.groups,
            k, s, p, d, pool.ceil_mode)
        return self._done(out, cache, name)

    def _backward_op(self, dout, input_grad):
        return backend.ops(self._backend).conv2d_relu_maxpool2d_backward(dout, self._cache,
                                                                         input_grad)


class _ConvRelu(_FusedStep):
    __slots__ = ()

    def __call__(self, x):
        conv = self._main
        if not _conv_ok(conv, x):
            return self._unfused_forward(x)
        conv._check_input(x)
        name = backend.get_backend()
        b = conv.bias.data if conv.bias is not None else None
        out, cache = backend.ops(name).conv2d_relu_forward(
            x, conv.weight.data, b, conv.stride, conv._padding_tblr, conv.dilation, conv.groups)
        return self._done(out, cache, name)

    def _backward_op(self, dout, input_grad):
        return backend.ops(self._backend).conv2d_relu_backward(dout, self._cache, input_grad)


class _LinearRelu(_FusedStep):
    __slots__ = ()
    _op = "linear_relu"

    def __call__(self, x):
        lin = self._main
        w = lin.weight.data
        if not (isinstance(x, np.ndarray) and x.ndim == 2 and x.shape[1] == lin.in_features
                and x.dtype == w.dtype):
            return self._unfused_forward(x)
        name = backend.get_backend()
        b = lin.bias.data if lin.bias is not None else None
        forward = getattr(backend.ops(name), self._op + "_forward")
        out, cache = forward(x, w, b, *self._activation_args())
        return self._done(out, cache, name)

    def _activation_args(self):
        return ()

    def _backward_op(self, dout, input_grad):
        backward = getattr(backend.ops(self._backend), self._op + "_backward")
        return backward(dout, self._cache, input_grad)


class _LinearLeakyRelu(_LinearRelu):
    __slots__ = ()
    _op = "linear_leaky_relu"

    def _activation_args(self):
        return (self.layers[1].negative_slope,)


PATTERNS = (
    ((Conv2d, ReLU, MaxPool2d), _ConvReluPool),
    ((Conv2d, MaxPool2d, ReLU), _ConvReluPool),
    ((Conv2d, ReLU), _ConvRelu),
    ((Linear, ReLU), _LinearRelu),
    ((Linear, LeakyReLU), _LinearLeakyRelu),
)


_MATCHES = {}


def match(types):
    """``(is_prefix, is_complete, step_class)`` for a run of layer ``types`` (a tuple): can it
    still grow into a fused run, can no op extend it, and its fused step class (or None)."""
    found = _MATCHES.get(types)
    if found is None:
        n = len(types)
        longer = [p for p, _ in PATTERNS if len(p) > n and p[:n] == types]
        step = next((cls for p, cls in PATTERNS if p == types), None)
        found = _MATCHES[types] = (bool(longer) or step is not None, not longer, step)
    return found


def step_class(types):
    """The fused step class for a run of layer ``types``, or None."""
    return match(types)[2]


def defers(module, x):
    """True if a call of ``module`` on ``x`` should wait for the next op (a fusable head)."""
    t = type(module)
    if t is Conv2d:
        return _conv_ok(module, x)
    if t is Linear:
        w = module.weight.data
        return (isinstance(x, np.ndarray) and x.ndim == 2 and x.shape[1] == module.in_features
                and x.dtype == w.dtype)
    return False


def build_plan(layers):
    """The execution plan for ``layers``: each entry a layer or a fused step over a run."""
    steps, i = [], 0
    while i < len(layers):
        for n in (3, 2, 1):
            run = layers[i:i + n]
            cls = step_class(tuple(map(type, run))) if n > 1 and len(run) == n else None
            if cls is not None or n == 1:
                steps.append(cls(run) if cls is not None else layers[i])
                i += n
                break
    return steps


def plan(owner, layers):
    """``owner``'s cached execution plan for ``layers`` (rebuilt when they or the switch change).

    What a ``Sequential`` runs: its layers are known up front, so the runs are found once.
    """
    if not _enabled:
        return layers
    key = tuple(map(id, layers))
    cached = owner.__dict__.get("_fusion_plan")
    if cached is not None and cached[0] == key:
        return cached[1]
    steps = build_plan(layers)
    # the plan holds the layers themselves, so their ids stay unique while the key is cached
    owner.__dict__["_fusion_plan"] = (key, steps)
    return steps
