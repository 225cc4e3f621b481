"""``Module``: the base of every layer and model, with torch.nn.Module's bookkeeping.

Contract: a subclass implements ``forward(x)``. Then either

- it also implements ``backward(dout)`` (a **leaf**: every layer in ``scratchnet.nn``): forward
  keeps what backward needs; backward returns the gradient w.r.t. the input of the last
  forward and **adds** parameter gradients into ``p.grad`` (torch accumulates the same way;
  ``zero_grad()`` clears); or
- it does not (a **composite**: a model written as in torch, calling layers and
  ``scratchnet.nn.functional`` ops): its forward is recorded on a tape and ``backward(dout)``
  replays it in reverse (``tape.py``), with the same result as a hand-written chain.

A training loop needs only the parameter gradients: torch never computes the gradient of an
input that does not require grad. :func:`backward_to_params` asks for the same saving.
Composites and the modules that set ``skips_input_grad = True`` (``Conv2d``, ``Linear``,
``Sequential``) take
``backward(dout, input_grad=False)`` and return None: the tape then skips the ops that see only
the input and hold no parameters (a Flatten in front of the first Linear), and the first ones
with parameters skip their dx.

Parameters and submodules are registered by attribute assignment, in order, so
``named_parameters()`` and ``state_dict()`` produce torch's key names (``conv_layers.0.weight``).
"""
from collections import OrderedDict

import numpy as np

from .parameter import Parameter

FLOAT_DTYPES = (np.float32, np.float64)


def backward_to_params(module, dout):
    """Run ``module``'s backward for its parameters' gradients only; returns None.

    The input gradient is skipped where the module can skip it (``skips_input_grad``) and
    computed and dropped where it cannot, so any Module may be passed.
    """
    if getattr(module, "skips_input_grad", False) or getattr(module, "_composite", False):
        module.backward(dout, input_grad=False)
    else:
        module.backward(dout)


def backward_steps(steps, dout, input_grad=True):
    """Backward through ``steps`` (modules called in this order by forward), last step first.

    Returns the input gradient, or None with ``input_grad=False``: then the steps before the
    first one holding parameters are not run, and that one is asked to skip its input gradient.
    """
    first = 0
    if not input_grad:
        first = next((i for i, m in enumerate(steps) if _has_parameters(m)), len(steps))
    for i in range(len(steps) - 1, first - 1, -1):
        if i == first and not input_grad:
            backward_to_params(steps[i], dout)
            return None
        dout = steps[i].backward(dout)
    return dout if input_grad else None


def _has_parameters(module):
    if isinstance(module, Module):  # its own registry: parameters() builds names (~2 µs)
        return bool(module._parameters) or any(map(_has_parameters, module._modules.values()))
    params = getattr(module, "parameters", None)
    if params is None:  # a fused step: its layers hold the parameters
        return any(_has_parameters(m) for m in getattr(module, "layers", ()))
    return next(iter(params()), None) is not None


class Module:
    """Base class: parameter registry, state dicts, train/eval mode, dtype moves."""

    # True where backward(dout, input_grad=False) skips the input gradient (see the docstring)
    skips_input_grad = False
    # True for classes without their own backward: forward is recorded, backward replays it
    _composite = True
    # a leaf's forward cache, empty until its first forward: defaults here rather than set in
    # each __init__, as a functional op builds a layer per call
    _cache = _backend = _in_shape = _out_shape = _out_dtype = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._composite = cls.backward is Module.backward

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        d = self.__dict__
        params = d.get("_parameters")
        if params is None:
            raise AttributeError(
                f"{type(self).__name__}: call super().__init__() before assigning attributes")
        if name not in params and name not in d["_modules"] \
                and not isinstance(value, (Parameter, Module)):
            # plain attributes (a layer's forward cache, every step) skip the registry
            object.__setattr__(self, name, value)
            return
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_parameter(self, name, param):
        """Register ``param`` (a Parameter or None, as torch allows for ``bias``) under ``name``."""
        if param is None:
            self._parameters.pop(name, None)
            object.__setattr__(self, name, None)
        else:
            setattr(self, name, param)

    def add_module(self, name, module):
        """Register a child module under ``name`` (used by containers with numeric names)."""
        self._modules[name] = module
        object.__setattr__(self, name, module)

    # ----- running -----
    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, dout=None, input_grad=True):
        """Replay the last forward's tape: d(input) from d(output), adding into every p.grad.

        ``dout``: the gradient of what forward returned (a tuple of them for a tuple output;
        None means 1 for a 0-d output). With ``input_grad=False`` only the parameter gradients
        are computed and None is returned.
        """
        tape = self.__dict__.get("_tape")
        if tape is None:
            raise RuntimeError(f"{type(self).__name__}: backward called before forward")
        return tape.backward(dout, input_grad)

    def __call__(self, *args, **kwargs):
        tape = _tape._active
        if tape is None:
            if self._composite:
                return _tape.run_composite(self, args, kwargs)
            return self.forward(*args, **kwargs)
        if self._composite:
            return self.forward(*args, **kwargs)  # its ops join the open tape
        return tape.run_leaf(self, args, kwargs)

    # ----- traversal -----
    def children(self):
        """Direct submodules, in registration order."""
        return iter(self._modules.values())

    def named_children(self):
        """``(name, module)`` for each direct submodule, each module once."""
        seen = set()
        for name, child in self._modules.items():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                yield name, child

    def named_modules(self, memo=None, prefix="", remove_duplicate=True):
        """``(name, module)`` for this module and every descendant, depth first; a module
        registered twice is listed once (unless ``remove_duplicate`` is False), as in torch."""
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is None:
                continue
            yield from child.named_modules(memo, f"{prefix}.{name}" if prefix else name,
                                           remove_duplicate)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix="", recurse=True, remove_duplicate=True):
        """``(dotted name, Parameter)`` pairs, in torch's order; a shared Parameter once
        unless ``remove_duplicate`` is False (``state_dict`` lists it under every name)."""
        modules = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) \
            if recurse else [(prefix, self)]
        seen = set()
        for mod_name, module in modules:
            for name, p in module._parameters.items():
                if remove_duplicate:
                    if id(p) in seen:
                        continue
                    seen.add(id(p))
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        """Every Parameter of this module and its descendants."""
        return [p for _, p in self.named_parameters()]

    # ----- state -----
    def state_dict(self):
        """``OrderedDict`` of name → ndarray (copies), with torch's key names."""
        return OrderedDict((name, p.data.copy())
                           for name, p in self.named_parameters(remove_duplicate=False))

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays from ``state_dict`` into the parameters, cast to each parameter's dtype.

        Raises KeyError naming missing and unexpected keys (when ``strict``) and ValueError
        naming any key whose shape differs from the parameter's.
        """
        own = OrderedDict(self.named_parameters(remove_duplicate=False))
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise KeyError(f"Error loading state_dict into {type(self).__name__}: "
                           + "; ".join(parts))
        arrays = {}
        for name, p in own.items():
            if name not in state_dict:
                continue
            value = np.asarray(state_dict[name])
            if value.shape != p.data.shape:
                raise ValueError(
                    f"Error loading state_dict into {type(self).__name__}: size mismatch for "
                    f"{name}: expected shape {tuple(p.data.shape)}, got {tuple(value.shape)}")
            arrays[name] = value
        for name, value in arrays.items():
            own[name].data[...] = value.astype(own[name].data.dtype, copy=False)
        return missing, unexpected

    # ----- modes -----
    def train(self, mode=True):
        """Set training mode (dropout active) on this module and its descendants."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        """Set evaluation mode (dropout off)."""
        return self.train(False)

    def zero_grad(self, set_to_none=True):
        """Clear every parameter's gradient."""
        for p in self.parameters():
            p.zero_grad(set_to_none)

    # ----- dtype -----
    def to(self, dtype):
        """Cast every parameter (and its gradient) to ``dtype`` (float32 or float64), in place."""
        dtype = np.dtype(dtype)
        if dtype.type not in FLOAT_DTYPES:
            raise TypeError(f"{type(self).__name__}.to: expected float32 or float64, got {dtype}")
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            if p.grad is not None:
                p.grad = p.grad.astype(dtype)
        return self

    def float(self):
        return self.to(np.float32)

    def double(self):
        return self.to(np.float64)

    @property
    def dtype(self):
        """dtype of the first parameter (float32 for parameter-free modules)."""
        params = self.parameters()
        return params[0].data.dtype if params else np.dtype(np.float32)

    # ----- display -----
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        if self._modules:
            for name, child in self._modules.items():
                child_repr = repr(child).replace("\n", "\n  ")
                lines.append(f"  ({name}): {child_repr}")
            return "\n".join(lines) + "\n)"
        return lines[0] + ")"


# at the bottom: the tape imports the layers, which import this module
from . import tape as _tape  # noqa: E402
