"""Adadelta, as torch.optim.Adadelta (foreach=False, capturable=False)."""
import numpy as np

from . import kernels
from .optimizer import Optimizer

__all__ = ["Adadelta"]


class Adadelta(Optimizer):
    """Adadelta: steps scaled by the ratio of running RMS of updates and of gradients.

    For each parameter p with gradient g, at every step (torch's single-tensor update, in the
    same order of operations, so float64 results agree with torch to round-off)::

        g = -g                                          if maximize
        g = g + weight_decay * p                        if weight_decay != 0
        square_avg = rho * square_avg + (1 - rho) * g * g
        delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g
        acc_delta = rho * acc_delta + (1 - rho) * delta * delta
        p = p - lr * delta

    ``lr`` scales the step after the RMS ratio, so lr=1.0 (the default) is the paper's rule.
    Parameters whose ``grad`` is None are skipped. State per parameter: ``step`` (a float32
    scalar array, as torch keeps it), ``square_avg`` and ``acc_delta``.

    Args:
        params: Parameters, ``(name, Parameter)`` pairs or param-group dicts
        lr: factor applied to the update (default 1.0)
        rho: decay rate of both running averages (default 0.9)
        eps: added inside both square roots (default 1e-6)
        weight_decay: L2 penalty (default 0)
        maximize: ascend the objective instead of descending it (keyword only)
    """

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, *, maximize=False):
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = {"lr": lr, "rho": rho, "eps": eps, "weight_decay": weight_decay,
                    "maximize": maximize}
        super().__init__(params, defaults)

    def step(self, closure=None):
        """Update every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None if closure is None else closure()
        for group in self.param_groups:
            lr, rho, eps = group["lr"], group["rho"], group["eps"]
            weight_decay = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = np.zeros((), np.float32)
                    state["square_avg"] = np.zeros_like(p.data)
                    state["acc_delta"] = np.zeros_like(p.data)
                square_avg, acc_delta = state["square_avg"], state["acc_delta"]
                state["step"] += 1
                if kernels.available(p):
                    # the same arithmetic in one compiled pass (kernels.py)
                    kernels.adadelta_update(p.data, p.grad, square_avg, acc_delta, lr, rho, eps,
                                            weight_decay, group["maximize"])
                    continue
                grad = p.grad if not group["maximize"] else -p.grad
                if weight_decay != 0:
                    grad = grad + weight_decay * p.data
                square_avg *= rho
                square_avg += (1 - rho) * grad * grad
                std = np.sqrt(square_avg + eps)
                delta = np.sqrt(acc_delta + eps)
                delta /= std
                delta *= grad
                acc_delta *= rho
                acc_delta += (1 - rho) * delta * delta
                p.data += -lr * delta
        return loss
