"""The correctness guard: a side's speed is only reported if its arithmetic matches torch.

On the first timing batch, each scratchnet backend and torch compute the loss and every
parameter gradient from the same float32 weights. Dropout is switched off (eval mode) for the
check, since the two frameworks draw different masks; everything else is the training step.
"""
import numpy as np
import torch

from scratchnet import backend
from scratchnet.nn.module import backward_to_params

from . import machine, workload

TOLERANCE = 1e-4  # float32, relative to the largest |torch value| of each array


def rel_error(ours, theirs):
    """max |ours - theirs| / max |theirs| (largest-entry scaled, as tests/helpers.py does)."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if ours.shape != theirs.shape:
        return float("inf")
    if ours.size == 0:
        return 0.0
    return float(np.max(np.abs(ours - theirs))) / max(float(np.max(np.abs(theirs))), 1e-30)


def _torch_reference(model_name, state, x, y):
    twin = workload.torch_model(model_name, state).eval()
    _, loss_fn = workload.losses(model_name)
    loss = loss_fn(twin(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()
    grads = {k: p.grad.numpy() for k, p in twin.named_parameters()}
    return loss.item(), grads


def check(model_name, backend_name, state, x, y, threads, tolerance=TOLERANCE):
    """Compare one backend's first-batch loss and gradients with torch's; a dict with ``ok``."""
    ref_loss, ref_grads = _torch_reference(model_name, state, x, y)
    try:
        model = workload.scratchnet_model(model_name, state).eval()
        loss_fn, _ = workload.losses(model_name)
        with backend.use_backend(backend_name):
            machine.set_blas_threads(1 if backend_name == "numba" else threads)
            loss = float(loss_fn(model(x), y))
            backward_to_params(model, loss_fn.backward())  # what the timed step runs
            machine.set_blas_threads(1)
        errors = {k: rel_error(p.grad if p.grad is not None else np.zeros(0), ref_grads[k])
                  for k, p in model.named_parameters()}
    except Exception as exc:  # a missing or broken op refuses the side instead of ending the run
        return {"ok": False, "reason": f"{type(exc).__name__}: {exc}"}
    loss_err = abs(loss - ref_loss) / max(abs(ref_loss), 1e-30)
    worst = max(errors, key=errors.get)
    ok = loss_err <= tolerance and errors[worst] <= tolerance
    result = {"ok": ok, "tolerance": tolerance, "loss": loss, "torch_loss": ref_loss,
              "loss_rel_error": loss_err, "max_grad_rel_error": errors[worst],
              "worst_parameter": worst, "grad_rel_errors": errors}
    if not ok:
        result["reason"] = (f"loss rel. error {loss_err:.1e}, {worst} grad rel. error "
                            f"{errors[worst]:.1e} (tolerance {tolerance:.0e})")
    return result
