"""Fused kernels: convolution + bias + ReLU (+ max pool), and linear + ReLU, in one pass.

Why fuse: run as separate ops, conv, ReLU and max pool each launch the thread pool, allocate
a full-size output and stream it through memory again (see
docs/performance.md). Here thread ``t`` owns samples
``[t·N//T, (t+1)·N//T)`` as in conv.py and, per sample, unfolds the input (im2col), runs the
GEMM into a per-thread (F, OH·OW) buffer that stays in cache, adds the bias, and then either
applies ReLU into the output or max-pools that buffer into the output and applies ReLU to the
pooled values. Only the pooled output and the winners' indices leave the thread. Each
``*_thread`` function is one thread's share, launched by ``per_thread.run`` (why not a
``prange`` kernel: compile time, see per_thread.py).

ReLU and max pooling commute exactly, gradient included, so one kernel serves
``conv -> relu -> pool`` and ``conv -> pool -> relu``: the pooled value is relu(max) = max(relu),
and a window whose max is <= 0 passes no gradient either way. In backward, thread ``t`` scatters
``dout`` (masked where the output is <= 0, as relu_backward does) to the saved winners in a
per-thread (F, OH·OW) buffer and runs conv.py's per-sample backward on it. Sample partition,
GEMM calls and summation order are those of the unfused ops, so results are identical.

Training extras (both optional, both off for plain calls):

- ``workspace``: a dict the calling layer owns and passes on every call. Buffers kept in it are
  reused from step to step instead of being allocated again (large fresh arrays come from
  ``mmap`` and cost a page fault per 4 KiB on first touch).
- kept columns: with a workspace, the forward pass unfolds each sample into its own slot of an
  (N, C·KH·KW, OH·OW) buffer (when that stays under ``KEEP_COLUMNS_MAX_BYTES``) and backward
  reads it back instead of running im2col again: the same numbers, one unfold per step instead
  of two.
- ``input_grad=False``: backward returns ``dx = None`` and skips the ``Wᵀ·dout`` GEMM and the
  col2im, as torch does for an input that does not require grad (a model's first layer).
"""
import numpy as np

from ..numpy_backend.pool import pool_output_size
from . import linear as _linear
from . import per_thread
from .activation import (_relu_backward_parallel, _relu_backward_span, _relu_parallel,
                         _relu_span, launch, leaky_relu_backward, leaky_relu_forward)
from .conv import (_geometry, _kernel_array, _n_threads, backward_sample, forward_method,
                   forward_sample, is_pointwise, out_size, padded_shape,
                   transposed_gradient_slots, uses_transposed_input_grad, weight_grad,
                   weight_grad_partials)
from .pool import is_plain_2x2, pool_planes

# kept columns cost N·C·KH·KW·OH·OW values of memory. digitcnn's conv2 (8.9 MB at batch 64):
# conv2 forward + backward 5 % faster kept. widecnn's conv2 (147 MB at batch 50): 24 % *slower*
# kept, as backward then streams the columns back from DRAM while a fresh unfold stays in the
# core's cache. Above this size backward unfolds again
KEEP_COLUMNS_MAX_BYTES = 32 << 20

__all__ = ["conv2d_relu_forward", "conv2d_relu_backward",
           "conv2d_relu_maxpool2d_forward", "conv2d_relu_maxpool2d_backward",
           "linear_relu_forward", "linear_relu_backward",
           "linear_leaky_relu_forward", "linear_leaky_relu_backward"]


@per_thread.by_address
def _pool_relu_sample(t, n, pooling):
    """out[n] = relu(maxpool(convs[t])); the winners' indices into index[n] (``full_index``)
    or index[t]."""
    convs, out, index, full_index, pool = pooling
    F, PH, PW = out.shape[1], out.shape[2], out.shape[3]
    pool_planes(convs[t], pool, out[n], index[n] if full_index else index[t])
    o = out[n].reshape(F * PH * PW)
    _relu_span(o, o, 0, o.size)


@per_thread.by_address
def _conv_relu_pool_forward_thread(t, args):
    """Thread t's samples of out (N, F, PH, PW) = relu(maxpool(conv(x) + b)); index: each
    winner's oh·OW + ow.

    conv: conv.forward_sample's tuple, whose dest is convs (T, F, OH, OW), the per-thread conv
    output, and sample_at its kernel. pooling: _pool_relu_sample's (convs, out, index,
    full_index, pool) and pool_at its address; index (N, F, PH, PW) with ``full_index``, else
    (T, F, PH, PW) scratch a thread reuses for each of its samples (nothing kept).

    The pool is called by address too, not inlined here: with it inline, the filter-vector
    convolution's forward ran at one thread's speed on two threads (3.0 against 1.7 ms per
    batch of 64 at digitcnn's conv2), though each piece alone scaled, and a worker holding
    only calls did not; the cause was not found (no hardware counters in this VM).
    """
    sample_at, conv, pool_at, pooling, N, T = args
    for n in range((t * N) // T, ((t + 1) * N) // T):
        per_thread.call(sample_at, t, n, conv)
        per_thread.call(pool_at, t, n, pooling)


@per_thread.by_address
def _scatter_sample(t, n, scatter):
    """Sample n's pooled output gradient scattered to the winners in dconvs[t] (F, OH·OW), or
    with ``transposed`` in dconvsT[t] (OH·OW, F) for a layer whose weight gradient reads it so
    (filter_vector_conv)."""
    dconvs, dconvsT, transposed, dout, out, index = scatter
    F, PH, PW = out.shape[1], out.shape[2], out.shape[3]
    dconv2 = dconvsT[t] if transposed else dconvs[t]
    # a flat element loop: numba's slice assignment costs seconds of compile time
    dflat = dconv2.reshape(dconv2.size)
    for i in range(dflat.size):
        dflat[i] = 0
    for f in range(F):
        for i in range(PH):
            for j in range(PW):
                # relu_backward's mask (out <= 0 passes nothing), then the pool's scatter;
                # += as overlapping windows can share a winner
                if not out[n, f, i, j] <= 0:
                    if transposed:
                        dconv2[index[n, f, i, j], f] += dout[n, f, i, j]
                    else:
                        dconv2[f, index[n, f, i, j]] += dout[n, f, i, j]


@per_thread.by_address
def _conv_relu_pool_backward_thread(t, args):
    """Thread t's samples of the pooled backward: _scatter_sample (at scatter_at), then
    conv.backward_sample's kernel at sample_at. Both by address: see
    _conv_relu_pool_forward_thread."""
    sample_at, conv, scatter_at, scatter, N, T = args
    for n in range((t * N) // T, ((t + 1) * N) // T):
        per_thread.call(scatter_at, t, n, scatter)
        per_thread.call(sample_at, t, n, conv)


@per_thread.by_address
def _conv_relu_forward_thread(t, args):
    """Thread t's samples of out (N, F, OH, OW) = relu(conv(x) + b): conv.forward_sample's
    kernel at sample_at writes out[n], then ReLU in place."""
    sample_at, conv, out, N, T = args
    F, OH, OW = out.shape[1], out.shape[2], out.shape[3]
    for n in range((t * N) // T, ((t + 1) * N) // T):
        per_thread.call(sample_at, t, n, conv)
        o = out[n].reshape(F * OH * OW)
        _relu_span(o, o, 0, o.size)


@per_thread.by_address
def _conv_relu_backward_thread(t, args):
    """Thread t's samples of relu(conv) backward: relu_backward into dconvs[t], then
    conv.backward_sample's kernel at sample_at."""
    sample_at, conv, dconvs, dout, out, N, T = args
    P = dconvs.shape[1] * dconvs.shape[2]
    dconv2 = dconvs[t]
    for n in range((t * N) // T, ((t + 1) * N) // T):
        d = dconv2.reshape(P)
        _relu_backward_span(dout[n].reshape(P), out[n].reshape(P), d, 0, P)
        per_thread.call(sample_at, t, n, conv)


def _conv_setup(x, w, b, stride, padding, dilation):
    dtype = x.dtype
    x = _kernel_array(x, dtype)
    w = _kernel_array(w, dtype)
    geo = _geometry(w, stride, padding, dilation)
    KH, KW, sh, sw, pt, pb, pl, pr, dh, dw = geo
    OH = out_size(x.shape[2], pt, pb, KH, sh, dh)
    OW = out_size(x.shape[3], pl, pr, KW, sw, dw)
    has_bias = b is not None
    bias = _kernel_array(b, dtype) if has_bias else np.zeros(w.shape[0], dtype=dtype)
    return x, w, bias, has_bias, geo, OH, OW


def _buffer(workspace, name, shape, dtype):
    """A zeroed array, or the workspace's buffer of that shape and dtype when there is one.

    Reused buffers are not zeroed again: every caller here overwrites them fully (im2col,
    GEMMs with beta 0), or zeroes them itself (the scatter buffers).
    """
    if workspace is None:
        # zeros, not empty: see conv.py (beta·c with beta 0 under NUMBA_DISABLE_JIT)
        return np.zeros(shape, dtype=dtype)
    buf = workspace.get(name)
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = workspace[name] = np.zeros(shape, dtype=dtype)
    return buf


def _columns(x, w, geo, OH, OW, workspace, method):
    """(cols, keep): column slots for the forward pass.

    With a workspace (the layer is training) and a small enough result: one slot per sample,
    kept for backward. Otherwise one scratch slot per thread. Empty when im2col is the identity
    or the forward kernel is not im2col + GEMM (``method``: it needs no columns; backward
    unfolds then, if it needs them), except that filter_vector_conv's slots hold a padded
    layer's samples zero-padded (``conv.padded_shape``), kept for backward alike.
    """
    N, C, dtype = x.shape[0], x.shape[1], x.dtype
    if method == "filter_vectors":
        shape, name = padded_shape(N, x, geo), "padded"
    elif method == "im2col" and not is_pointwise(*geo[:8]):
        shape, name = (N, C * geo[0] * geo[1], OH * OW), "cols"
    else:
        shape = (1, 0, 0)
    if shape[1] == 0:
        return np.zeros((1, 0, 0), dtype=dtype), False
    keep = (workspace is not None
            and N * shape[1] * shape[2] * dtype.itemsize <= KEEP_COLUMNS_MAX_BYTES)
    slots = N if keep else _n_threads(N)
    return _buffer(workspace, name, (slots,) + shape[1:], dtype), keep


def _backward_buffers(x, w, geo, groups, OH, OW, T, kept_cols, workspace):
    """Per-thread scratch for backward (T slots) plus the weight/bias partials; dconvsT is
    conv.transposed_gradient_slots' (None unless filter_vector_conv computes dW, which needs
    no columns: only the padded samples of a padded layer)."""
    C, F, dtype = x.shape[1], w.shape[0], x.dtype
    dconvsT = transposed_gradient_slots(x, w, geo, groups, T, OH, OW)
    rows = C * geo[0] * geo[1]
    if kept_cols is not None:
        cols = kept_cols
    elif dconvsT is not None:  # the padded samples, if the layer is padded
        shape = padded_shape(T, x, geo)
        cols = (_buffer(workspace, "padded", shape, dtype) if shape[1]
                else np.zeros(shape, dtype=dtype))
    elif is_pointwise(*geo[:8]):
        cols = np.zeros((1, 0, 0), dtype=dtype)
    else:
        cols = _buffer(workspace, "cols", (T, rows, OH * OW), dtype)
    # no input-gradient columns where im2col is the identity or dx is a correlation
    no_dcols = is_pointwise(*geo[:8]) or (dconvsT is not None
                                          and uses_transposed_input_grad(w.shape, geo, dtype))
    dcols = (np.zeros((1, 0, 0), dtype=dtype) if no_dcols
             else _buffer(workspace, "dcols", (T, rows, OH * OW), dtype))
    dconvs = _buffer(workspace, "dconvs", (T, F, OH * OW), dtype)
    dw_part = weight_grad_partials(T, w, groups, dtype)
    db_part = np.zeros((T, F), dtype=dtype)
    return cols, dcols, dconvs, dconvsT, dw_part, db_part


def _input_grad_buffer(x, input_grad):
    """dx (zeroed: col2im accumulates), or an empty stand-in the kernels never touch."""
    return np.zeros_like(x) if input_grad else np.zeros((0,) + x.shape[1:], dtype=x.dtype)


def _finish(dx, dw_part, db_part, w, has_bias, input_grad):
    """(dx or None, dw, db): the per-thread partials summed as conv2d_backward does."""
    dw = weight_grad(dw_part, w.shape)
    db = db_part.sum(axis=0) if has_bias else None
    return (dx if input_grad else None), dw, db


def conv2d_relu_forward(x, w, b, stride, padding, dilation, groups, workspace=None):
    """relu(conv2d(x)). Arguments and result as conv2d_forward. Returns (out, cache).

    workspace: optional dict owned by the caller, passed again on every call (module
    docstring); with it the columns are kept for backward.
    """
    x, w, bias, has_bias, geo, OH, OW = _conv_setup(x, w, b, stride, padding, dilation)
    N = x.shape[0]
    out = np.zeros((N, w.shape[0], OH, OW), dtype=x.dtype)
    groups = int(groups)
    kept = None
    if N > 0:
        T = _n_threads(N)
        method = forward_method(x, w, geo, groups, OW)
        cols, keep = _columns(x, w, geo, OH, OW, workspace, method)
        at, conv = forward_sample(x, w, bias, has_bias, cols, keep, out, True, geo, groups,
                                  method)
        per_thread.run(_conv_relu_forward_thread, T, (at, conv, out, N, T))
        kept = cols if keep else None
    return out, (x, w, has_bias, geo, groups, out, kept, workspace)


def conv2d_relu_backward(dout, cache, input_grad=True):
    """dout (N, F, OH, OW). Returns (dx, dw, db) as conv2d_backward; dx None without input_grad."""
    x, w, has_bias, geo, groups, out, kept, workspace = cache
    N, OH, OW = x.shape[0], out.shape[2], out.shape[3]
    dout = _kernel_array(dout, x.dtype)
    T = _n_threads(N)
    cols, dcols, dconvs, dconvsT, dw_part, db_part = _backward_buffers(
        x, w, geo, groups, OH, OW, T, kept, workspace)
    dx = _input_grad_buffer(x, input_grad)
    if N > 0:
        at, conv = backward_sample(x, w, dconvs, False, has_bias, dx, dw_part, db_part, cols,
                                   kept is not None, dcols, geo, groups, OH, OW, input_grad,
                                   dconvsT)
        per_thread.run(_conv_relu_backward_thread, T, (at, conv, dconvs, dout, out, N, T))
    return _finish(dx, dw_part, db_part, w, has_bias, input_grad)


def conv2d_relu_maxpool2d_forward(x, w, b, stride, padding, dilation, groups,
                                  kernel_size, pool_stride, pool_padding, pool_dilation,
                                  ceil_mode, workspace=None):
    """maxpool2d(relu(conv2d(x))) (== relu(maxpool2d(conv2d(x)))) in one parallel pass.

    Convolution arguments as conv2d_forward, then the pool's as maxpool2d_forward, then an
    optional workspace dict (as conv2d_relu_forward).
    Returns (out, cache); out (N, F, PH, PW).

    Without a workspace (evaluation, plain calls) the winners' indices are not stored: each
    thread keeps only its current sample's, in cache, instead of writing N·F·PH·PW int64
    (11.5 MB for lenet's conv1 at batch 1000). A backward pass after such a call runs the
    forward kernel once more to find them: the same numbers, paid only by that rare use.
    """
    x, w, bias, has_bias, geo, OH, OW = _conv_setup(x, w, b, stride, padding, dilation)
    pool = (tuple(kernel_size), tuple(pool_stride), tuple(pool_padding), tuple(pool_dilation))
    (pkh, pkw), (psh, psw), (pph, ppw), (pdh, pdw) = pool
    PH = pool_output_size(OH, pkh, psh, pph, pdh, ceil_mode)
    PW = pool_output_size(OW, pkw, psw, ppw, pdw, ceil_mode)
    conv = (x, w, bias, has_bias, geo, int(groups), OH, OW, pool, PH, PW)
    full_index = workspace is not None
    out, index, kept = _pooled_forward(conv, workspace, full_index)
    return out, (conv, out, index if full_index else None, kept, workspace)


def _pooled_forward(conv, workspace, full_index):
    """(out, index, kept columns or None): the forward kernel on conv_relu_maxpool's setup."""
    x, w, bias, has_bias, geo, groups, OH, OW, pool, PH, PW = conv
    N, F = x.shape[0], w.shape[0]
    T = _n_threads(N)
    out = np.empty((N, F, PH, PW), dtype=x.dtype)
    index = np.empty((N if full_index else T, F, PH, PW), dtype=np.int64)
    if N == 0:
        return out, index, None
    convs = _buffer(workspace, "convs", (T, F, OH, OW), x.dtype)
    method = forward_method(x, w, geo, groups, OW)
    cols, keep = _columns(x, w, geo, OH, OW, workspace, method)
    at, conv = forward_sample(x, w, bias, has_bias, cols, keep, convs, False, geo, groups,
                              method)
    pooling = (convs, out, index, full_index, _pool_argument(pool, OH, OW, PH, PW))
    per_thread.run(_conv_relu_pool_forward_thread, T,
                   (at, conv, per_thread.address(_pool_relu_sample, pooling), pooling, N, T))
    return out, index, (cols if keep else None)


def _pool_argument(pool, OH, OW, PH, PW):
    """pool.pool_planes's ``pool``: () for a plain 2×2 window, else its eight numbers."""
    flat = tuple(int(v) for p in pool for v in p)
    return () if is_plain_2x2(*flat, OH, OW, PH, PW) else flat


def conv2d_relu_maxpool2d_backward(dout, cache, input_grad=True):
    """dout (N, F, PH, PW). Returns (dx, dw, db) as conv2d_backward; dx None without input_grad."""
    conv, out, index, kept, workspace = cache
    x, w, _, has_bias, geo, groups, OH, OW = conv[:8]
    N = x.shape[0]
    if index is None:  # forward ran without a workspace: find the winners again
        _, index, _ = _pooled_forward(conv, None, True)
    dout = _kernel_array(dout, x.dtype)
    T = _n_threads(N)
    cols, dcols, dconvs, dconvsT, dw_part, db_part = _backward_buffers(
        x, w, geo, groups, OH, OW, T, kept, workspace)
    dx = _input_grad_buffer(x, input_grad)
    if N > 0:
        transposed = dconvsT is not None
        at, conv = backward_sample(x, w, dconvs, False, has_bias, dx, dw_part, db_part, cols,
                                   kept is not None, dcols, geo, groups, OH, OW, input_grad,
                                   dconvsT, given_transposed=transposed)
        if not transposed:
            dconvsT = np.zeros((1, 0, 0), dtype=x.dtype)
        scatter = (dconvs, dconvsT, transposed, dout, out, index)
        per_thread.run(_conv_relu_pool_backward_thread, T,
                       (at, conv, per_thread.address(_scatter_sample, scatter), scatter, N, T))
    return _finish(dx, dw_part, db_part, w, has_bias, input_grad)


def linear_relu_forward(x, w, b):
    """relu(x·wᵀ + b). Arguments as linear_forward. Returns (out, cache)."""
    out, cache = _linear.linear_forward(x, w, b)
    flat = out.reshape(-1)
    launch(_relu_span, _relu_parallel, flat.size, flat.size, flat, flat)
    return out, (cache, out)


def linear_relu_backward(dout, cache, input_grad=True):
    """dout (N, out). Returns (dx, dw, db) as linear_backward (dx None without input_grad)."""
    linear_cache, out = cache
    dy = np.empty(out.shape, dtype=out.dtype)
    launch(_relu_backward_span, _relu_backward_parallel, out.size, out.size,
           np.ascontiguousarray(dout, dtype=out.dtype).reshape(-1), out.reshape(-1),
           dy.reshape(-1))
    return _linear.linear_backward(dy, linear_cache, input_grad)


def linear_leaky_relu_forward(x, w, b, negative_slope):
    """leaky_relu(x·wᵀ + b, negative_slope). Arguments as linear_forward. Returns (out, cache).

    The unfused ops' kernels, called from one step: what it saves is a layer's Python round
    trip (mlp128's step at batch 32 is ~150 µs, of which ~90 µs is Python).
    """
    y, linear_cache = _linear.linear_forward(x, w, b)
    out, act_cache = leaky_relu_forward(y, negative_slope)
    return out, (linear_cache, act_cache)


def linear_leaky_relu_backward(dout, cache, input_grad=True):
    """dout (N, out). Returns (dx, dw, db) as linear_backward (dx None without input_grad)."""
    linear_cache, act_cache = cache
    dy = leaky_relu_backward(np.ascontiguousarray(dout), act_cache)
    return _linear.linear_backward(dy, linear_cache, input_grad)
