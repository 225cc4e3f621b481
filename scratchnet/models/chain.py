"""``Chain``: a model written as named layers plus a fixed order of calls, like a torch ``forward``.

Tutorials often keep only the layers with weights as attributes (``conv1``, ``fc1``) and call
``F.relu`` / ``F.max_pool2d`` inside ``forward``. A Chain keeps the same attribute names (so the
state-dict keys match the tutorial's) and runs ``self.steps`` — the attributes in call order —
forward, and the same list reversed for backward (through the fusion plan of nn/fusion.py,
which runs e.g. conv -> relu -> pool as one fused step on the same parameters).
"""
from .. import nn


class Chain(nn.Module):
    """Subclasses set their layers as attributes, then ``self.steps = [...]`` in call order."""

    def forward(self, x):
        # runs like conv -> relu -> pool execute as one fused step (nn/fusion.py)
        steps = nn.fusion.plan(self, self.steps)
        self.__dict__["_last_steps"] = steps
        for layer in steps:
            x = layer(x)
        return x

    skips_input_grad = True

    def backward(self, dout, input_grad=True):
        """Gradient w.r.t. the input (None with ``input_grad=False``, see nn.Sequential)."""
        steps = self.__dict__.get("_last_steps") or self.steps
        return nn.module.backward_steps(steps, dout, input_grad)

    @property
    def steps(self):
        return self.__dict__["_steps"]

    @steps.setter
    def steps(self, layers):
        # a plain list, not registered: each layer is registered once, under its attribute name
        self.__dict__["_steps"] = list(layers)
