"""Parity helpers: compute the same expression in scratchnet and in torch, compare.

Relative error is ``max|ours - theirs| / max(max|theirs|, 1)`` style-free: we divide by the
largest magnitude of the reference so that tiny entries near zero don't blow up the ratio.
"""
import numpy as np
import torch

# Tolerances the project promises (see README "Parity").
RTOL = {np.float64: 1e-10, np.float32: 1e-5}
BACKENDS = ("numpy", "numba")
DTYPES = (np.float64, np.float32)
TORCH_DTYPE = {np.float64: torch.float64, np.float32: torch.float32}


def rel_error(ours, theirs):
    """max |ours - theirs| scaled by the largest |theirs| (1 when that is below 1e-30)."""
    ours = np.asarray(ours, dtype=np.float64)
    theirs = np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape, f"shape {ours.shape} != reference {theirs.shape}"
    if ours.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(theirs))), 1e-30)
    return float(np.max(np.abs(ours - theirs))) / scale


def assert_close(ours, theirs, dtype, name="value", factor=1.0):
    """Assert ``ours`` matches the torch result within the project tolerance for ``dtype``."""
    if isinstance(theirs, torch.Tensor):
        theirs = theirs.detach().cpu().numpy()
    tol = RTOL[np.dtype(dtype).type] * factor
    err = rel_error(ours, theirs)
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e}"


def to_torch(a, requires_grad=False):
    """A torch tensor sharing no memory with ``a``, optionally tracking gradients."""
    t = torch.tensor(np.array(a))
    return t.requires_grad_(requires_grad)
