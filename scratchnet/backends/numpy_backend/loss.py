"""Negative log-likelihood and cross-entropy: readable NumPy op pairs, the specification.

Both follow ``torch.nn.functional.nll_loss`` / ``cross_entropy`` exactly:

- a class-index target ``t_i`` picks ``-w[t_i] * logp[i, t_i]``; rows whose target equals
  ``ignore_index`` contribute 0 and are left out of the weight sum;
- ``reduction="mean"`` divides by the sum of the picked weights (the number of kept rows when
  ``weight`` is None), so an empty batch or an all-ignored one gives nan, as in torch;
- label smoothing ``eps`` mixes with the uniform distribution as torch does:
  ``loss = (1 - eps) * nll + (eps / C) * smooth`` with ``smooth_i = -sum_c w[c] * logp[i, c]``,
  masked by ``ignore_index`` and divided by the same weight sum under "mean";
- probability targets ``(N, C)`` are smoothed first, ``t' = t * (1 - eps) + eps / C``, then
  ``loss_i = -sum_c logp[i, c] * t'[i, c] * w[c]``; "mean" divides by N (not by weights).

The layer (``scratchnet.nn.loss``) validates and flattens extra dims; these ops trust their input.
"""
import numpy as np

__all__ = ["nll_loss_forward", "nll_loss_backward", "cross_entropy_forward",
           "cross_entropy_backward"]


def _target_weights(target, weight, ignore_index, dtype):
    """Per-row weight ``w[target]`` (1 without ``weight``), zeroed where the row is ignored.

    Returns ``(wt, keep, safe)``: wt (N,), keep (N,) bool, and safe (N,) the targets with
    ignored rows pointed at class 0 so that they can index without going out of bounds.
    """
    keep = target != ignore_index
    safe = np.where(keep, target, 0)
    wt = np.ones(target.shape[0], dtype) if weight is None else weight[safe].astype(dtype)
    return np.where(keep, wt, 0).astype(dtype), keep, safe


def _divide(a, b):
    """``a / b`` in floating point, with 0 / 0 = nan as torch gives for an empty mean."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return a / b


def _reduce(rows, total, reduction):
    """Apply ``reduction`` to per-row losses; "mean" divides by ``total``."""
    if reduction == "none":
        return rows
    if reduction == "sum":
        return np.asarray(rows.sum(), dtype=rows.dtype)
    return np.asarray(_divide(rows.sum(), total), dtype=rows.dtype)


def _row_grad(dloss, total, reduction, n, dtype):
    """d(loss)/d(row loss) for each row: (N,) from ``dloss`` (scalar, or (N,) for "none")."""
    dloss = np.asarray(dloss, dtype=dtype)
    if reduction == "none":
        return dloss.reshape(n)
    g = dloss.reshape(()) if reduction == "sum" else _divide(dloss.reshape(()), total)
    return np.full(n, g, dtype=dtype)


def nll_loss_forward(logp, target, weight, ignore_index, reduction):
    """Negative log-likelihood of the target classes.

    Inputs:
    - logp: (N, C) log-probabilities, float32 or float64
    - target: (N,) int64 class indices in [0, C), or ``ignore_index``
    - weight: (C,) class weights of logp's dtype, or None
    - ignore_index: int, rows with this target contribute nothing
    - reduction: "mean" | "sum" | "none"

    Returns ``(loss, cache)``: loss is a 0-d array, or (N,) for "none".
    """
    N, C = logp.shape
    wt, keep, safe = _target_weights(target, weight, ignore_index, logp.dtype)
    picked = logp[np.arange(N), safe]
    rows = np.zeros(N, logp.dtype)
    rows[keep] = -(wt[keep] * picked[keep])
    total = wt.sum()
    cache = (keep, safe, wt, total, reduction, (N, C))
    return _reduce(rows, total, reduction), cache


def nll_loss_backward(dloss, cache):
    """Gradient of ``nll_loss_forward``.

    Inputs:
    - dloss: upstream gradient, a scalar (0-d) or (N,) for reduction "none"
    - cache: from ``nll_loss_forward``

    Returns dlogp (N, C): ``-w[t_i] * g_i`` at each kept target, 0 elsewhere.
    """
    keep, safe, wt, total, reduction, (N, C) = cache
    dtype = wt.dtype
    dlogp = np.zeros((N, C), dtype)
    # torch forms -(dloss / total) first and multiplies by w[t] after: with total == 0 and
    # w[t] == 0 that is 0 * inf = nan, which is what torch returns, so keep its order
    g = -_row_grad(dloss, total, reduction, N, dtype)
    rows = np.nonzero(keep)[0]
    with np.errstate(invalid="ignore"):
        dlogp[rows, safe[rows]] = wt[rows] * g[rows]
    return dlogp


def _log_softmax(x):
    """Row-wise log-softmax of (N, C) ``x``, subtracting the row max so exp never overflows."""
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def cross_entropy_forward(x, target, weight, ignore_index, reduction, label_smoothing):
    """Cross-entropy of raw scores ``x``: log-softmax fused with nll (and label smoothing).

    Inputs:
    - x: (N, C) unnormalised scores, float32 or float64
    - target: (N,) int64 class indices (or ``ignore_index``), or (N, C) class probabilities
      of x's dtype
    - weight: (C,) class weights of x's dtype, or None
    - ignore_index: int, rows with this class-index target contribute nothing
    - reduction: "mean" | "sum" | "none"
    - label_smoothing: float in [0, 1]

    Returns ``(loss, cache)``: loss is a 0-d array, or (N,) for "none".
    """
    N, C = x.shape
    eps = float(label_smoothing)
    logp = _log_softmax(x)
    w = np.ones(C, x.dtype) if weight is None else weight
    if target.ndim == 2:
        t = target * (1 - eps) + eps / C if eps > 0 else target
        loss = _reduce(-(logp * t * w).sum(axis=1), N, reduction)
        coef, keep, total = t * w, None, N
    else:
        nll, nll_cache = nll_loss_forward(logp, target, weight, ignore_index, "none")
        keep, safe, wt, total, _, _ = nll_cache
        coef = np.zeros((N, C), x.dtype)
        coef[np.arange(N), safe] = wt
        if eps > 0:
            smooth = np.where(keep, -(logp * w).sum(axis=1), 0).astype(x.dtype)
            # torch reduces the two terms separately, then mixes them
            loss = (1 - eps) * _reduce(nll, total, reduction) \
                + _reduce(smooth, total, reduction) * (eps / C)
            coef = (1 - eps) * coef + (eps / C) * w
        else:
            loss = _reduce(nll, total, reduction)
    # coef[i] is -d(row loss i)/d(logp[i]): one-hot w[t], smoothed, or probabilities times w
    cache = (np.exp(logp), coef, keep, total, reduction)
    return np.asarray(loss, dtype=x.dtype), cache


def cross_entropy_backward(dloss, cache):
    """Gradient of ``cross_entropy_forward`` with respect to the scores.

    Inputs:
    - dloss: upstream gradient, a scalar (0-d) or (N,) for reduction "none"
    - cache: from ``cross_entropy_forward``

    Returns dx (N, C) = ``dlogp - softmax(x) * dlogp.sum(1)``, where ``dlogp = -g_i * coef``
    and coef holds each row's target weights (one-hot, smoothed or probabilities, times w).
    """
    p, coef, keep, total, reduction = cache
    N = p.shape[0]
    g = _row_grad(dloss, total, reduction, N, p.dtype)
    # coef * -g in this order: a zero-weight target under a zero weight sum gives
    # 0 * inf = nan across its row, as torch does
    with np.errstate(invalid="ignore"):
        dlogp = coef * -g[:, None]
    dx = dlogp - p * dlogp.sum(axis=1, keepdims=True)
    if keep is not None:
        dx[~keep] = 0  # ignored rows get exactly 0 whatever g is, as in torch
    return dx
