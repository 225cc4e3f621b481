"""Negative log-likelihood and cross-entropy (numpy twin: numpy_backend/loss.py), row by row.

    nll_i = -w[t_i]·logp[i, t_i]        cross_entropy = nll(log_softmax(x)) (+ label smoothing)

Each kernel makes one pass per row and never materialises log-softmax: the forward keeps only
the row max and log-sum-exp, and the backward recomputes ``softmax = exp((x - max) - lse)``.
Thin Python wrappers turn ``weight=None`` into ones and do the floating-point reductions and
label-smoothing mixes (kernels take arrays and ints only). See numpy_backend/loss.py for the
exact rules, which these follow to round-off.
"""
import math

import numba
import numpy as np
from numba import njit

__all__ = ["nll_loss_forward", "nll_loss_backward", "cross_entropy_forward",
           "cross_entropy_backward"]


@njit(cache=True)
def _nll_rows(logp, target, weight, ignore_index):
    """Per-row ``-w[t] * logp[i, t]`` and ``w[t]``, both 0 for ignored rows."""
    N = logp.shape[0]
    rows = np.zeros(N, logp.dtype)
    wt = np.zeros(N, logp.dtype)
    for i in range(N):
        t = target[i]
        if t != ignore_index:
            if t < 0 or t >= logp.shape[1]:
                raise IndexError("nll_loss_forward: a target class index is out of range")
            wt[i] = weight[t]
            rows[i] = -(weight[t] * logp[i, t])
    return rows, wt


@njit(cache=True)
def _nll_backward_rows(target, weight, ignore_index, g, C):
    """dlogp (N, C) with ``w[t_i] * g_i`` at each kept target (``g`` already carries the sign)."""
    N = target.shape[0]
    dlogp = np.zeros((N, C), g.dtype)
    for i in range(N):
        t = target[i]
        if t != ignore_index:
            dlogp[i, t] = weight[t] * g[i]
    return dlogp


@njit(cache=True, inline="always")
def _row_lse(x, i):
    """Row max and ``log(sum(exp(x[i] - max)))`` of row ``i``."""
    C = x.shape[1]
    m = x[i, 0]
    for c in range(1, C):
        if x[i, c] > m:
            m = x[i, c]
    s = 0.0
    for c in range(C):
        s += math.exp(x[i, c] - m)
    return m, math.log(s)


@njit(cache=True)
def _ce_index_forward(x, target, weight, ignore_index, smooth):
    """Per-row nll, smoothing sum ``-sum_c w[c] logp[i, c]`` (when ``smooth``), ``w[t]``.

    Also returns the row max and log-sum-exp for the backward pass.
    """
    N, C = x.shape
    nll = np.zeros(N, x.dtype)
    sm = np.zeros(N, x.dtype)
    wt = np.zeros(N, x.dtype)
    mx = np.empty(N, x.dtype)
    lse = np.empty(N, x.dtype)
    for i in range(N):
        m, ls = _row_lse(x, i)
        mx[i] = m
        lse[i] = ls
        t = target[i]
        if t == ignore_index:
            continue
        if t < 0 or t >= C:
            raise IndexError("cross_entropy_forward: a target class index is out of range")
        wt[i] = weight[t]
        nll[i] = -(weight[t] * ((x[i, t] - m) - ls))
        if smooth:
            acc = 0.0
            for c in range(C):
                acc += ((x[i, c] - m) - ls) * weight[c]
            sm[i] = -acc
    return nll, sm, wt, mx, lse


@njit(cache=True)
def _ce_index_backward(x, mx, lse, target, weight, ignore_index, gn, gs):
    """dx (N, C) for class-index targets.

    ``dlogp[i, c] = gs[i] * w[c] + (c == t_i) * w[t_i] * gn[i]`` on kept rows (gn, gs carry the
    sign, the reduction and the (1 - eps) / (eps / C) mix), then
    ``dx = dlogp - softmax * sum(dlogp)``. Ignored rows are 0.
    """
    N, C = x.shape
    dx = np.zeros((N, C), x.dtype)
    for i in range(N):
        t = target[i]
        if t == ignore_index:
            continue
        # the target's weight times its coefficient first: 0 * inf = nan as in torch
        dt = weight[t] * gn[i]
        total = dt
        for c in range(C):
            total += gs[i] * weight[c]
        for c in range(C):
            p = math.exp((x[i, c] - mx[i]) - lse[i])
            d = gs[i] * weight[c]
            if c == t:
                d += dt
            dx[i, c] = d - p * total
    return dx


@njit(cache=True)
def _ce_prob_forward(x, t, weight):
    """Per-row ``-sum_c logp[i, c] * t[i, c] * w[c]``, the row max and log-sum-exp."""
    N, C = x.shape
    rows = np.zeros(N, x.dtype)
    mx = np.empty(N, x.dtype)
    lse = np.empty(N, x.dtype)
    for i in range(N):
        m, ls = _row_lse(x, i)
        mx[i] = m
        lse[i] = ls
        acc = 0.0
        for c in range(C):
            acc += ((x[i, c] - m) - ls) * t[i, c] * weight[c]
        rows[i] = -acc
    return rows, mx, lse


@njit(cache=True)
def _ce_prob_backward(x, mx, lse, t, weight, g):
    """dx (N, C) for probability targets: ``dlogp = -g_i * t * w``, through log-softmax."""
    N, C = x.shape
    dx = np.empty((N, C), x.dtype)
    for i in range(N):
        total = 0.0
        for c in range(C):
            total += t[i, c] * weight[c] * -g[i]
        for c in range(C):
            p = math.exp((x[i, c] - mx[i]) - lse[i])
            dx[i, c] = t[i, c] * weight[c] * -g[i] - p * total
    return dx


def _weights(weight, C, dtype):
    return np.ones(C, dtype) if weight is None else np.ascontiguousarray(weight, dtype=dtype)


def _reduce(rows, total, reduction):
    """Apply ``reduction`` to per-row losses; "mean" divides by ``total`` (0 / 0 = nan)."""
    if reduction == "none":
        return rows
    s = rows.sum()
    if reduction == "mean":
        if total != 0:
            s = s / total
        else:
            # (errstate only on this rare path: entering it costs microseconds per call)
            with np.errstate(divide="ignore", invalid="ignore"):
                s = s / total
    return np.asarray(s, dtype=rows.dtype)


def _row_grad(dloss, total, reduction, n, dtype):
    """d(loss)/d(row loss) for each row: (N,) from ``dloss`` (scalar, or (N,) for "none")."""
    dloss = np.asarray(dloss, dtype=dtype)
    if reduction == "none":
        return np.ascontiguousarray(dloss.reshape(n))
    g = dloss.reshape(())
    if reduction == "mean":
        if total != 0:
            g = g / total
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                g = g / total
    return np.full(n, g, dtype=dtype)


def nll_loss_forward(logp, target, weight, ignore_index, reduction):
    """Negative log-likelihood of the target classes (see numpy_backend.nll_loss_forward).

    logp (N, C), target (N,) int64, weight (C,) or None -> loss 0-d, or (N,) for "none".
    """
    logp = np.ascontiguousarray(logp)
    target = np.ascontiguousarray(target, dtype=np.int64)
    N, C = logp.shape
    w = _weights(weight, C, logp.dtype)
    rows, wt = _nll_rows(logp, target, w, int(ignore_index))
    total = wt.sum()
    cache = (target, w, int(ignore_index), total, reduction, C)
    return _reduce(rows, total, reduction), cache


def nll_loss_backward(dloss, cache):
    """Gradient of ``nll_loss_forward``: dlogp (N, C)."""
    target, w, ignore_index, total, reduction, C = cache
    g = -_row_grad(dloss, total, reduction, target.shape[0], w.dtype)
    if not numba.config.DISABLE_JIT:
        return _nll_backward_rows(target, w, ignore_index, g, C)
    with np.errstate(invalid="ignore"):
        return _nll_backward_rows(target, w, ignore_index, g, C)


def cross_entropy_forward(x, target, weight, ignore_index, reduction, label_smoothing):
    """Cross-entropy of raw scores (see numpy_backend.cross_entropy_forward).

    x (N, C); target (N,) int64 or (N, C) probabilities; weight (C,) or None
    -> loss 0-d, or (N,) for "none".
    """
    x = np.ascontiguousarray(x)
    N, C = x.shape
    eps = float(label_smoothing)
    w = _weights(weight, C, x.dtype)
    if target.ndim == 2:
        t = target * (1 - eps) + eps / C if eps > 0 else target
        t = np.ascontiguousarray(t, dtype=x.dtype)
        rows, mx, lse = _ce_prob_forward(x, t, w)
        loss = _reduce(rows, N, reduction)
        cache = ("prob", x, mx, lse, t, w, N, reduction, eps)
    else:
        target = np.ascontiguousarray(target, dtype=np.int64)
        nll, sm, wt, mx, lse = _ce_index_forward(x, target, w, int(ignore_index), int(eps > 0))
        total = wt.sum()
        if eps > 0:
            # torch reduces the two terms separately, then mixes them
            loss = (1 - eps) * _reduce(nll, total, reduction) \
                + _reduce(sm, total, reduction) * (eps / C)
        else:
            loss = _reduce(nll, total, reduction)
        cache = ("index", x, mx, lse, target, w, total, reduction, eps, int(ignore_index))
    return np.asarray(loss, dtype=x.dtype), cache


def cross_entropy_backward(dloss, cache):
    """Gradient of ``cross_entropy_forward`` with respect to the scores: dx (N, C)."""
    kind, x, mx, lse = cache[:4]
    N, C = x.shape
    if kind == "prob":
        t, w, total, reduction, _ = cache[4:]
        g = _row_grad(dloss, total, reduction, N, x.dtype)
        return _ce_prob_backward(x, mx, lse, t, w, g)
    target, w, total, reduction, eps, ignore_index = cache[4:]
    g = _row_grad(dloss, total, reduction, N, x.dtype)
    gn = (1 - eps) * -g
    gs = (eps / C) * -g if eps > 0 else np.zeros_like(g)
    # a zero weight sum makes 0 * inf = nan on purpose (as torch); only NUMBA_DISABLE_JIT warns
    if not numba.config.DISABLE_JIT:
        return _ce_index_backward(x, mx, lse, target, w, ignore_index, gn, gs)
    with np.errstate(invalid="ignore"):
        return _ce_index_backward(x, mx, lse, target, w, ignore_index, gn, gs)
