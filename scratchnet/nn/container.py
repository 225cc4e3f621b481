"""``Sequential``: modules applied in order; backward runs them in reverse.

The modules run through an execution plan (``fusion.plan``) in which runs such as
Conv2d-ReLU-MaxPool2d are single fused steps; the children themselves are unchanged.
"""
from . import fusion
from .module import Module, backward_steps


class Sequential(Module):
    """``Sequential(*modules)``: children named ``"0"``, ``"1"``, ... as in torch."""

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: argument {i} is {type(m).__name__}, not a Module")
            self.add_module(str(i), m)

    def __getitem__(self, idx):
        return list(self._modules.values())[idx]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

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
        steps = self.__dict__.get("_last_steps") or list(self._modules.values())
        return backward_steps(steps, dout, input_grad)
