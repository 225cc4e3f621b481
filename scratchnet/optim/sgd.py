"""Stochastic gradient descent with momentum, as torch.optim.SGD (foreach=False)."""
import numpy as np

from . import kernels
from .optimizer import Optimizer

__all__ = ["SGD"]


class SGD(Optimizer):
    """Stochastic gradient descent (optionally with momentum, Nesterov, weight decay).

    For each parameter p with gradient g, in this order (torch's single-tensor update, so
    float64 results agree with torch to round-off)::

        g = -g                                   if maximize
        g = g + weight_decay * p                 if weight_decay != 0
        if momentum != 0:
            buf = g (a copy)                     on the first step
            buf = momentum * buf + (1 - dampening) * g     afterwards
            g = g + momentum * buf               if nesterov
            g = buf                              otherwise
        p = p - lr * g

    Parameters whose ``grad`` is None are skipped (their buffers left as they were). State:
    ``momentum_buffer`` per parameter, only when momentum != 0.

    Args:
        params: Parameters, ``(name, Parameter)`` pairs or param-group dicts
        lr: learning rate (default 1e-3)
        momentum: momentum factor (default 0)
        dampening: dampening for momentum (default 0)
        weight_decay: L2 penalty (default 0)
        nesterov: Nesterov momentum (needs momentum > 0 and dampening 0)
        maximize: ascend the objective instead of descending it (keyword only)
    """

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, *, maximize=False):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening,
                    "weight_decay": weight_decay, "nesterov": nesterov, "maximize": maximize}
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, defaults)

    def step(self, closure=None):
        """Update every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None if closure is None else closure()
        for group in self.param_groups:
            lr = group["lr"]
            momentum = group["momentum"]
            dampening = group["dampening"]
            weight_decay = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                # the same arithmetic in one compiled pass (see kernels.py), where it pays:
                # a plain small update is one numpy expression, cheaper than a kernel call
                if (momentum != 0 or p.data.size >= kernels.MIN_ELEMENTS_PLAIN) \
                        and kernels.available(p):
                    buf = None
                    first = False
                    if momentum != 0:
                        state = self.state[p]
                        buf = state.get("momentum_buffer")
                        first = buf is None
                        if first:
                            buf = state["momentum_buffer"] = np.empty_like(p.data)
                    kernels.sgd_update(p.data, p.grad, buf, lr, momentum, dampening,
                                       weight_decay, first, group["nesterov"], group["maximize"])
                    continue
                grad = p.grad if not group["maximize"] else -p.grad
                if weight_decay != 0:
                    grad = grad + weight_decay * p.data
                if momentum != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = grad.copy()
                    else:
                        buf *= momentum
                        buf += (1 - dampening) * grad
                    grad = grad + momentum * buf if group["nesterov"] else buf
                p.data += -lr * grad
        return loss
