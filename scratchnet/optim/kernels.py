"""Numba update kernels for SGD, Adam and Adadelta: the numpy update's arithmetic, one pass per
parameter.

Why: the numpy update walks each parameter up to six times and allocates temporaries. The
kernel does, per element, exactly the operations of the numpy code in sgd.py / adam.py /
adadelta.py, in the
same order and in the parameter's dtype (each Python scalar is first cast to that dtype, as
numpy does with a Python float against a float32 array), so the results are bitwise those of
the numpy path under NumPy 2's promotion rules. No ``fastmath``: LLVM then never contracts
a multiply and an add into an FMA, which would change the rounding.

Adam's and Adadelta's kernels use ``error_model="numpy"``: a float division is then a plain
division giving inf/NaN, as the numpy update does, instead of a test of every divisor for zero.

Used when the numba backend is selected and the JIT is enabled; the numpy backend keeps the
readable numpy update.
"""
import numba
import numpy as np
from numba import njit, prange

from .. import backend
from ..backends.numba_backend.common import launch

__all__ = ["available", "sgd_update", "adam_update", "adadelta_update"]

# elements below which an update stays on the calling thread: a memory-bound pass that
# waking the pool would cost more than it saves
PARALLEL_MIN_ELEMENTS = 1 << 20
# without momentum the numpy update is a single expression; below this size its two Python-level
# calls cost less than the kernel's dispatch
MIN_ELEMENTS_PLAIN = 1 << 15


def available(p):
    """True when the kernels can update Parameter ``p`` in place (numba backend, JIT on)."""
    if numba.config.DISABLE_JIT or backend.get_backend() != "numba":
        return False
    d, g = p.data, p.grad
    return (d.flags.c_contiguous and d.flags.writeable and g.dtype == d.dtype
            and g.shape == d.shape and d.dtype.type in (np.float32, np.float64))


@njit(cache=True)
def _sgd_span(p, g, buf, neg_lr, momentum, one_minus_damp, wd, use_wd, use_momentum, first,
              nesterov, maximize, lo, hi):
    # sliced first: the index is provably >= 0, so no negative-index wrapping in the loop
    p, g = p[lo:hi], g[lo:hi]
    if use_momentum:
        buf = buf[lo:hi]
    for i in range(p.size):
        gi = g[i]
        if maximize:
            gi = -gi
        if use_wd:
            gi = gi + wd * p[i]
        if use_momentum:
            if first:
                b = gi
            else:
                # buf *= momentum; buf += (1 - dampening) * grad
                b = buf[i] * momentum + one_minus_damp * gi
            buf[i] = b
            if nesterov:
                gi = gi + momentum * b
            else:
                gi = b
        p[i] = p[i] + neg_lr * gi


@njit(cache=True, parallel=True)
def _sgd_parallel(p, g, buf, neg_lr, momentum, one_minus_damp, wd, use_wd, use_momentum, first,
                  nesterov, maximize, chunks):
    n = p.size
    for c in prange(chunks):
        _sgd_span(p, g, buf, neg_lr, momentum, one_minus_damp, wd, use_wd, use_momentum, first,
                  nesterov, maximize, c * n // chunks, (c + 1) * n // chunks)


def _run(span, parallel, n, args):
    """The update over n elements, split across threads only above PARALLEL_MIN_ELEMENTS."""
    launch(span, parallel, n, n if n >= PARALLEL_MIN_ELEMENTS else 0, *args)


def sgd_update(p, grad, buf, lr, momentum, dampening, weight_decay, first, nesterov, maximize):
    """In place: SGD's update of ``p`` (and ``buf`` when momentum != 0), as SGD.step's numpy code.

    p, grad, buf: C-contiguous arrays of one dtype (buf of p's shape; ignored without momentum).
    ``first``: buf is initialised to the gradient, as torch does on a parameter's first step.
    """
    t = p.dtype.type
    pf, gf = p.reshape(-1), np.ascontiguousarray(grad).reshape(-1)
    bf = buf.reshape(-1) if buf is not None else pf[:0]
    args = (pf, gf, bf, t(-lr), t(momentum), t(1 - dampening), t(weight_decay),
            weight_decay != 0, momentum != 0, bool(first), bool(nesterov), bool(maximize))
    _run(_sgd_span, _sgd_parallel, pf.size, args)


@njit(cache=True, error_model="numpy")
def _adam_span(p, g, m, v, vmax, w, one_minus_w, lerp_small, beta2, one_minus_beta2, wd,
               use_wd, decay, use_decay, amsgrad, maximize, bc2_sqrt, eps, neg_step, lo, hi):
    p, g, m, v = p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]
    if amsgrad:
        vmax = vmax[lo:hi]
    for i in range(p.size):
        gi = g[i]
        if maximize:
            gi = -gi
        pi = p[i]
        if use_decay:  # AdamW: p *= 1 - lr * weight_decay
            pi = pi * decay
        if use_wd:  # Adam's L2 penalty: grad + weight_decay * p
            gi = gi + wd * pi
        # torch's lerp, in the form Adam.step picks for this weight
        if lerp_small:
            mi = m[i] + w * (gi - m[i])
        else:
            mi = gi - (gi - m[i]) * one_minus_w
        m[i] = mi
        vi = v[i] * beta2
        vi = vi + one_minus_beta2 * gi * gi
        v[i] = vi
        if amsgrad:
            # np.maximum: NaN from either side wins
            vm = vmax[i]
            if vi != vi or (vm == vm and vi > vm):
                vm = vi
            vmax[i] = vm
            vi = vm
        p[i] = pi + neg_step * mi / (np.sqrt(vi) / bc2_sqrt + eps)


@njit(cache=True, parallel=True, error_model="numpy")
def _adam_parallel(p, g, m, v, vmax, w, one_minus_w, lerp_small, beta2, one_minus_beta2, wd,
                   use_wd, decay, use_decay, amsgrad, maximize, bc2_sqrt, eps, neg_step, chunks):
    n = p.size
    for c in prange(chunks):
        _adam_span(p, g, m, v, vmax, w, one_minus_w, lerp_small, beta2, one_minus_beta2, wd,
                   use_wd, decay, use_decay, amsgrad, maximize, bc2_sqrt, eps, neg_step,
                   c * n // chunks, (c + 1) * n // chunks)


def adam_update(p, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, beta1, beta2, eps,
                weight_decay, decoupled, maximize, step):
    """In place: Adam's update of ``p``, ``exp_avg``, ``exp_avg_sq`` (and ``max_exp_avg_sq``
    unless it is None), exactly as Adam.step's numpy code; ``step`` is the new step count.

    Every Python scalar is cast to p's dtype where the numpy code mixes it with an array
    (numpy's rule for a Python float against a float32 array), so each operation rounds alike.
    """
    t = p.dtype.type
    w = t(1 - beta1)  # the lerp weight, cast first as Adam.step does
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    flat = [a.reshape(-1) for a in (p, np.ascontiguousarray(grad), exp_avg, exp_avg_sq)]
    amsgrad = max_exp_avg_sq is not None
    vmax = max_exp_avg_sq.reshape(-1) if amsgrad else flat[0][:0]
    args = (*flat, vmax, w, 1 - w, bool(abs(w) < 0.5), t(beta2), t(1 - beta2),
            t(weight_decay), weight_decay != 0 and not decoupled, t(1 - lr * weight_decay),
            weight_decay != 0 and bool(decoupled), amsgrad, bool(maximize),
            t(bias_correction2 ** 0.5), t(eps), t(-(lr / bias_correction1)))
    _run(_adam_span, _adam_parallel, flat[0].size, args)


@njit(cache=True, error_model="numpy")
def _adadelta_span(p, g, sq, acc, rho, one_minus_rho, eps, wd, use_wd, maximize, neg_lr, lo, hi):
    p, g, sq, acc = p[lo:hi], g[lo:hi], sq[lo:hi], acc[lo:hi]
    for i in range(p.size):
        gi = g[i]
        if maximize:
            gi = -gi
        if use_wd:
            gi = gi + wd * p[i]
        s = sq[i] * rho
        s = s + one_minus_rho * gi * gi
        sq[i] = s
        delta = np.sqrt(acc[i] + eps) / np.sqrt(s + eps) * gi
        acc[i] = acc[i] * rho + one_minus_rho * delta * delta
        p[i] = p[i] + neg_lr * delta


@njit(cache=True, parallel=True, error_model="numpy")
def _adadelta_parallel(p, g, sq, acc, rho, one_minus_rho, eps, wd, use_wd, maximize, neg_lr,
                       chunks):
    n = p.size
    for c in prange(chunks):
        _adadelta_span(p, g, sq, acc, rho, one_minus_rho, eps, wd, use_wd, maximize, neg_lr,
                       c * n // chunks, (c + 1) * n // chunks)


def adadelta_update(p, grad, square_avg, acc_delta, lr, rho, eps, weight_decay, maximize):
    """In place: Adadelta's update of ``p``, ``square_avg`` and ``acc_delta``, exactly as
    Adadelta.step's numpy code (each Python scalar cast to p's dtype first)."""
    t = p.dtype.type
    flat = [a.reshape(-1) for a in (p, np.ascontiguousarray(grad), square_avg, acc_delta)]
    args = (*flat, t(rho), t(1 - rho), t(eps), t(weight_decay), weight_decay != 0,
            bool(maximize), t(-lr))
    _run(_adadelta_span, _adadelta_parallel, flat[0].size, args)
