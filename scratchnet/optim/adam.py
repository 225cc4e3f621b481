"""Adam and AdamW, as torch.optim.Adam / AdamW (foreach=False, capturable=False)."""
import numpy as np

from . import kernels
from .optimizer import Optimizer

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    """Adam, with bias correction, optional AMSGrad and L2 or decoupled weight decay.

    For each parameter p with gradient g, at step t = 1, 2, ... (torch's single-tensor update,
    in the same order of operations, so float64 results agree with torch to round-off)::

        g = -g                                        if maximize
        p = p * (1 - lr * weight_decay)               if decoupled_weight_decay (AdamW)
        g = g + weight_decay * p                      otherwise, if weight_decay != 0
        m = m + (1 - beta1) * (g - m)                 torch's lerp (m = beta1 m + (1 - beta1) g)
        v = beta2 * v + (1 - beta2) * g * g
        vmax = max(vmax, v); v_used = vmax            if amsgrad (else v_used = v)
        step_size = lr / (1 - beta1 ** t)
        denom = sqrt(v_used) / sqrt(1 - beta2 ** t) + eps
        p = p - step_size * m / denom

    (The lerp form holds while 1 - beta1 < 0.5; above it torch uses
    ``m = g - (g - m) * beta1``, and so does this class.) Parameters whose ``grad`` is None are
    skipped. State per parameter: ``step`` (a float32 scalar array, as torch keeps it),
    ``exp_avg`` (m), ``exp_avg_sq`` (v) and, with amsgrad, ``max_exp_avg_sq`` (vmax).

    Args:
        params: Parameters, ``(name, Parameter)`` pairs or param-group dicts
        lr: learning rate (default 1e-3)
        betas: decay rates (beta1, beta2) of the moment averages (default (0.9, 0.999))
        eps: added to the denominator (default 1e-8)
        weight_decay: L2 penalty, or the decoupled decay rate (default 0)
        amsgrad: use the running maximum of v (default False)
        maximize: ascend the objective instead of descending it (keyword only)
        decoupled_weight_decay: decay the weights directly, as AdamW (keyword only)
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, maximize=False, decoupled_weight_decay=False):
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = {"lr": lr, "betas": (float(betas[0]), float(betas[1])), "eps": eps,
                    "weight_decay": weight_decay, "amsgrad": amsgrad, "maximize": maximize,
                    "decoupled_weight_decay": decoupled_weight_decay}
        super().__init__(params, defaults)

    def step(self, closure=None):
        """Update every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None if closure is None else closure()
        for group in self.param_groups:
            lr = group["lr"]
            beta1, beta2 = group["betas"]
            weight_decay = group["weight_decay"]
            eps = group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = np.zeros((), np.float32)
                    state["exp_avg"] = np.zeros_like(p.data)
                    state["exp_avg_sq"] = np.zeros_like(p.data)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = np.zeros_like(p.data)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                if kernels.available(p):
                    # the same arithmetic in one compiled pass (kernels.py)
                    kernels.adam_update(p.data, p.grad, exp_avg, exp_avg_sq,
                                        state["max_exp_avg_sq"] if group["amsgrad"] else None,
                                        lr, beta1, beta2, eps,
                                        weight_decay, group["decoupled_weight_decay"],
                                        group["maximize"], float(state["step"]))
                    continue

                grad = p.grad if not group["maximize"] else -p.grad
                if weight_decay != 0:
                    if group["decoupled_weight_decay"]:
                        p.data *= 1 - lr * weight_decay
                    else:
                        grad = grad + weight_decay * p.data

                # torch's lerp: the weight is cast to the parameter's dtype, then whichever form
                # keeps the error smallest for that weight
                w = p.data.dtype.type(1 - beta1)
                if abs(w) < 0.5:
                    exp_avg += w * (grad - exp_avg)
                else:
                    exp_avg[...] = grad - (grad - exp_avg) * (1 - w)
                exp_avg_sq *= beta2
                exp_avg_sq += (1 - beta2) * grad * grad

                step = float(state["step"])
                bias_correction1 = 1 - beta1 ** step
                bias_correction2 = 1 - beta2 ** step
                step_size = lr / bias_correction1
                bias_correction2_sqrt = bias_correction2 ** 0.5
                if group["amsgrad"]:
                    max_exp_avg_sq = state["max_exp_avg_sq"]
                    np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
                    denom = np.sqrt(max_exp_avg_sq) / bias_correction2_sqrt + eps
                else:
                    denom = np.sqrt(exp_avg_sq) / bias_correction2_sqrt + eps
                p.data += -step_size * exp_avg / denom
        return loss


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay, ``p = p * (1 - lr * weight_decay)`` each step.

    The update is Adam's (see :class:`Adam`) with ``decoupled_weight_decay=True``: the decay
    shrinks the weights before the moment updates and never enters m or v. Default
    ``weight_decay=1e-2``, as torch.optim.AdamW.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True)

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        # as torch: an AdamW always decays decoupled, whatever the loaded groups say
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
