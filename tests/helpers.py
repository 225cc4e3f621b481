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


# Whole-model parity tests build their weights after ``scratchnet.manual_seed(WEIGHT_SEED)``,
# so a test's weights never depend on which tests ran before it. Why that matters in float32:
# even with break_ties, a few of the ~10^5 activations of a conv model sit within round-off of
# a kink (a ReLU input within 1e-6 of 0, two max-pool candidates as close), and the two
# libraries' last-bit rounding may put one on either side, sending a valid but different
# subgradient to the input (multicnn, batch 12, numpy backend: 2 of 150 seeds failed on an AMD
# Zen 4 machine, one through a sign flip at conv2's ReLU, one through a max-pool near-tie after
# it). With weights left to the order of tests, an unrelated new test could turn that into a
# failure on one machine and not on another.
WEIGHT_SEED = 0


def break_ties(x, dtype, seed=0, amplitude=0.05):
    """x with small fixed noise added in float32, unchanged in float64; cast to ``dtype``.

    Why: a real MNIST image is mostly background pixels of one value, so the first conv's
    outputs tie exactly inside many max-pool windows. In float64 both sides compute those ties
    bitwise equal and pick the first maximum alike, but in float32 the two sides' convolutions
    (OpenBLAS here, oneDNN in torch) round differently in the last bit, so each side breaks a
    tie its own way and routes that window's input gradient to another pixel: a valid but
    different subgradient (torch float32 then differs from torch float64 by as much). Noise of
    ``amplitude`` (in normalised pixel units, against a range of about 3) makes every window's
    maximum win by far more than float32 round-off, so the float32 check compares gradients,
    not tie-breaking.
    """
    x = np.asarray(x, dtype=np.float64)
    if np.dtype(dtype) == np.float32:
        x = x + np.random.default_rng(seed).uniform(-amplitude, amplitude, x.shape)
    return x.astype(dtype)


def to_torch(a, requires_grad=False):
    """A torch tensor sharing no memory with ``a``, optionally tracking gradients."""
    t = torch.tensor(np.array(a))
    return t.requires_grad_(requires_grad)


def conv_case_id(case):
    """A test id for a conv kernel case (N, C, H, W, F, (KH, KW), bias)."""
    N, C, H, W, Fo, k, bias = case
    return f"N{N}-C{C}-{H}x{W}-F{Fo}-k{k[0]}x{k[1]}-b{int(bias)}"


def conv_case_arrays(case, dtype, seed=0):
    """(x, w, b) for a conv kernel case (N, C, H, W, F, (KH, KW), bias); b None without bias."""
    N, C, H, W, Fo, (KH, KW), bias = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((Fo, C, KH, KW)).astype(dtype)
    b = rng.standard_normal(Fo).astype(dtype) if bias else None
    return x, w, b
