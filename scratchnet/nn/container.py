"""``Sequential`` and ``ModuleList``, as in torch.nn.

A Sequential knows its layers before it runs, so it needs no tape: it runs an execution plan
(``fusion.plan``) in which runs such as Conv2d-ReLU-MaxPool2d are single fused steps, and its
backward walks the same steps in reverse. That keeps the per-step Python cost of small
Sequential models (mlp128) at one list walk each way.
"""
import operator
from collections import OrderedDict

from . import fusion
from .module import Module, backward_steps


def _check_module(owner, name, m):
    if not isinstance(m, Module):
        raise TypeError(f"{owner}: {name} is {type(m).__name__}, not a Module")


def _module_at(modules, idx):
    """``modules[idx]`` for an integer index, negative ones included, as a list indexes."""
    i = operator.index(idx)
    if not -len(modules) <= i < len(modules):
        raise IndexError(f"index {i} is out of range")
    return modules[i]


class Sequential(Module):
    """``Sequential(*modules)`` (children named ``"0"``, ``"1"``, ...) or
    ``Sequential(OrderedDict([(name, module), ...]))`` (children under those names)."""

    def __init__(self, *args):
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            for name, m in args[0].items():
                _check_module("Sequential", f"module {name!r}", m)
                self.add_module(name, m)
        else:
            for i, m in enumerate(args):
                _check_module("Sequential", f"argument {i}", m)
                self.add_module(str(i), m)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return Sequential(OrderedDict(list(self._modules.items())[idx]))
        return _module_at(list(self._modules.values()), idx)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        """Add ``module`` at the end (named by its position)."""
        _check_module("Sequential.append", "module", module)
        self.add_module(str(len(self)), module)
        return self

    def forward(self, x):
        steps = fusion.plan(self, list(self._modules.values()))
        # backward must walk the steps this forward took (fusion may be switched in between)
        self.__dict__["_last_steps"] = steps
        for m in steps:
            x = m(x)
        return x

    skips_input_grad = True

    def backward(self, dout, input_grad=True):
        """Gradient w.r.t. the input of the last forward (None with ``input_grad=False``:
        then only the parameter gradients are computed, see ``module.backward_to_params``)."""
        steps = self.__dict__.get("_last_steps")
        if steps is None:
            raise RuntimeError("Sequential: backward called before forward")
        return backward_steps(steps, dout, input_grad)


class ModuleList(Module):
    """``ModuleList(modules=None)``: a list of modules, registered as ``"0"``, ``"1"``, ...

    It holds modules for a forward to call (``for layer in self.layers: x = layer(x)``); it
    has no forward of its own, as in torch.
    """

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def __getitem__(self, idx):
        modules = list(self._modules.values())
        if isinstance(idx, slice):
            return ModuleList(modules[idx])
        return _module_at(modules, idx)

    def __setitem__(self, idx, module):
        _check_module("ModuleList", f"item {idx}", module)
        i = operator.index(idx) % len(self)
        self.add_module(str(i), module)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        """Add ``module`` at the end."""
        _check_module("ModuleList.append", "module", module)
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules):
        """Append every module of ``modules``."""
        for m in modules:
            self.append(m)
        return self

    def forward(self, *args, **kwargs):
        raise NotImplementedError("ModuleList has no forward: call its modules in a loop")
