"""2-D convolution: one thread per batch slice, im2col + single-threaded GEMM per sample.

Design: a single thread pool. Thread ``t`` owns samples ``[t·N//T, (t+1)·N//T)``
and a private column buffer; for each sample it unfolds the input into ``col``
(C·KH·KW, OH·OW) and calls sgemm/dgemm ``W (F, C·KH·KW) @ col -> out[n] (F, OH·OW)``, which is
already NCHW, so no transposes are needed. Backward recomputes ``col`` (cheaper than keeping
N column matrices alive between passes: the per-thread buffer stays in cache), adds
``dout[n] @ colᵀ`` into a per-thread dW partial, and scatters ``Wᵀ @ dout[n]`` back into
``dx[n]`` (col2im), a chunk of input channels at a time so each chunk's rows stay in L2
(channels_per_chunk). Partials are summed after the parallel loop, so no two threads ever
write the same memory.

im2col and col2im have two loops each: one output row at a time (any geometry), and for
stride 1 with OW == W ("same" padding) one contiguous span per column row (same_width).

Compiled code is split into kernels that call each other by address (per_thread.py), so that
LLVM optimises each piece once: a per-thread worker (this module's, or a fused kernel's: conv +
bias + ReLU + pool) calls one sample's forward or backward kernel (``forward_sample``,
``backward_sample``), which calls the layer's im2col and col2im loops (``im2col_address``) and
the GEMM. Fused and plain convolutions run the same sample kernels, so they do the same
arithmetic. Which loop and which forward kernel a layer uses is chosen in Python.

The forward pass of a layer that ``direct_conv.applies`` to (stride 1, no padding, one group,
few filters, rows that fill vectors: lenet's two convolutions) runs direct_conv's
register-blocked kernel instead of im2col + GEMM (``forward_sample(..., "direct")``) and needs
no columns; its backward pass is the one here. A layer that ``filter_vector_conv.applies`` to
(stride 1, one group, 64 filters or a multiple, AVX-512: digitcnn's, mitxcnn's and widecnn's
conv2) runs that module's kernels for the forward pass and the weight gradient, which need no
columns either (``"filter_vectors"``); its input gradient is the GEMM + col2im here, or, where
its channels nearly fill whole filter blocks (``uses_transposed_input_grad``: widecnn's conv2),
that module's forward kernel again, on the zero-padded output gradient with the weights
flipped and transposed (a stride-1 layer's dx is that correlation; widecnn's conv2 backward
32.2 -> 26.6 ms per batch of 50). For a padded such layer the column slots hold each sample
zero-padded instead (``padded_shape``): the kernels run unpadded on that copy.

Where a layer has enough output pixels (``uses_vector_products``), its products run on
vector_linear.py's kernels instead of OpenBLAS (``rows_at``, ``dot_at``, ``columns_at`` in the
tuples below):
the forward GEMM of one group, the weight gradient (dot products along the pixels, added into
the thread's partial), the bias gradient (dout·1, the same dot products) and a filter-vector
layer's input-gradient columns.

Column layout: row ``(c·KH + kh)·KW + kw``, column ``oh·OW + ow``; the rows of group ``g`` are
the contiguous block ``[g·Cg·KH·KW, (g+1)·Cg·KH·KW)``, so each group is a plain sub-matrix.
"""
import numba
import numpy as np
from numba import njit, types
from numba.core.errors import TypingError
from numba.extending import overload

from . import direct_conv, filter_vector_conv, per_thread, vector_linear
from .blas import gemm

__all__ = ["conv2d_forward", "conv2d_backward"]

# Hot loops index flat arrays with unsigned integers: Numba must wrap negative signed indices
# (a branch per access), which stops LLVM from vectorising the copy; unsigned ones need no wrap
# (2-4x faster im2col here). Plain numpy.uint64 under NUMBA_DISABLE_JIT.
U = np.uint64


@njit(cache=True)
def out_size(size, pad_lo, pad_hi, kernel, stride, dilation):
    """Output length along one axis: (size + pads - dilation·(kernel-1) - 1) // stride + 1."""
    return (size + pad_lo + pad_hi - dilation * (kernel - 1) - 1) // stride + 1


@njit(cache=True)
def _valid_range(offset, stride, size, n_out):
    """[lo, hi) of the outputs o whose input index o·stride + offset lies in [0, size)."""
    lo = 0 if offset >= 0 else (stride - 1 - offset) // stride
    last = size - 1 - offset
    hi = last // stride + 1 if last >= 0 else 0
    lo = min(lo, n_out)
    hi = max(min(hi, n_out), lo)
    return lo, hi


@njit(cache=True)
def is_pointwise(KH, KW, sh, sw, pt, pb, pl, pr):
    """True when im2col is the identity (1×1 kernel, stride 1, no padding): col = x[n] (C, H·W)."""
    return (KH == 1 and KW == 1 and sh == 1 and sw == 1
            and pt == 0 and pb == 0 and pl == 0 and pr == 0)


# im2col and col2im, called by address (``run_loop``) from the per-sample kernels below.
# Why by address: a kernel that calls them holds none of their code, so LLVM optimises each
# loop once, in its own module, instead of once more inside every kernel that calls it
# (measured with digitcnn's first step on one core: see DESIGN.md, "Compile time"). Which
# loop a layer runs is then a Python choice (``im2col_address``), made once per call.
#
# Each loop takes (a, b, geo): the sample's image x_n (C, H, W) and its columns col
# (C·KH·KW, OH·OW) (the other way round for col2im), both C-contiguous, and
# geo = (KH, KW, sh, sw, pt, pl, dh, dw, OH, OW).
# im2col: col[(c·KH+kh)·KW+kw, oh·OW+ow] = x_n[c, oh·sh+kh·dh-pt, ow·sw+kw·dw-pl], fully
# overwritten (zeros where the window hits padding).
# col2im, its adjoint: adds dcol into dx_n (not zeroed here); dcol is scratch (the
# same-width loop zeroes some of its entries on the way).


@per_thread.by_address
def im2col_rows(x_n, col, geo):
    """im2col one output row at a time (any geometry)."""
    KH, KW, sh, sw, pt, pl, dh, dw, OH, OW = geo
    C, H, W = x_n.shape
    P = OH * OW
    xf = x_n.reshape(C * H * W)
    cf = col.reshape(col.size)
    for c in range(C):
        for kh in range(KH):
            off_h = kh * dh - pt
            oh_lo, oh_hi = _valid_range(off_h, sh, H, OH)
            for kw in range(KW):
                r0 = ((c * KH + kh) * KW + kw) * P
                off_w = kw * dw - pl
                # the valid ow range is computed once so the copy loop has no bounds tests
                ow_lo, ow_hi = _valid_range(off_w, sw, W, OW)
                for oh in range(OH):
                    d = r0 + oh * OW
                    if oh < oh_lo or oh >= oh_hi:
                        for ow in range(OW):
                            cf[U(d + ow)] = 0
                        continue
                    s = (c * H + oh * sh + off_h) * W + off_w
                    for ow in range(ow_lo):
                        cf[U(d + ow)] = 0
                    if sw == 1:
                        # a contiguous copy LLVM vectorises (with `ow * sw` it cannot know the
                        # stride is 1 and copies element by element: 2x slower im2col)
                        for ow in range(ow_lo, ow_hi):
                            cf[U(d + ow)] = xf[U(s + ow)]
                    else:
                        for ow in range(ow_lo, ow_hi):
                            cf[U(d + ow)] = xf[U(s + ow * sw)]
                    for ow in range(ow_hi, OW):
                        cf[U(d + ow)] = 0


@per_thread.by_address
def col2im_rows(dcol, dx_n, geo):
    """col2im one output row at a time (any geometry)."""
    KH, KW, sh, sw, pt, pl, dh, dw, OH, OW = geo
    C, H, W = dx_n.shape
    P = OH * OW
    df = dcol.reshape(dcol.size)
    xf = dx_n.reshape(C * H * W)
    for c in range(C):
        for kh in range(KH):
            off_h = kh * dh - pt
            oh_lo, oh_hi = _valid_range(off_h, sh, H, OH)
            for kw in range(KW):
                r0 = ((c * KH + kh) * KW + kw) * P
                off_w = kw * dw - pl
                ow_lo, ow_hi = _valid_range(off_w, sw, W, OW)
                for oh in range(oh_lo, oh_hi):
                    d = r0 + oh * OW
                    s = (c * H + oh * sh + off_h) * W + off_w
                    if sw == 1:  # contiguous: vectorised (see im2col_rows)
                        for ow in range(ow_lo, ow_hi):
                            xf[U(s + ow)] += df[U(d + ow)]
                    else:
                        for ow in range(ow_lo, ow_hi):
                            xf[U(s + ow * sw)] += df[U(d + ow)]


# Stride 1 with OW == W ("same" padding: widecnn's convolutions). Column rows and image rows
# then share the pitch W, so one column row's valid entries lie at a constant offset from
# their pixels: one contiguous span per (c, kh, kw) instead of one short copy per output row
# (OW = 14 leaves an 8-wide vector loop mostly in its scalar remainder). The span also covers
# the entries that wrap from one image row into the next; those are then set to zero.
# widecnn's conv2 per sample on one core: im2col 350 -> 147 us, col2im 247 -> 159 us. One
# loop serving both cases ran 2x slower on either.

@njit(cache=True)
def _same_width_span(c, kh, kw, KH, KW, H, W, pt, pl, dh, dw, OH, OW):
    """(r0, d0, d1, shift, oh_lo, oh_hi, ow_lo, ow_hi) of one column row in the same-width
    case: the row starts at flat r0, its valid entries lie in [d0, d1) (empty: d0 == d1) and
    entry p reads pixel p + shift."""
    r0 = ((c * KH + kh) * KW + kw) * OH * OW
    off_h = kh * dh - pt
    off_w = kw * dw - pl
    oh_lo, oh_hi = _valid_range(off_h, 1, H, OH)
    ow_lo, ow_hi = _valid_range(off_w, 1, W, OW)
    if oh_lo >= oh_hi or ow_lo >= ow_hi:
        return r0, r0, r0, 0, oh_lo, oh_lo, ow_lo, ow_lo
    d0 = r0 + oh_lo * OW + ow_lo
    d1 = r0 + (oh_hi - 1) * OW + ow_hi
    return r0, d0, d1, (c * H + off_h) * W + off_w - r0, oh_lo, oh_hi, ow_lo, ow_hi


@per_thread.by_address
def im2col_spans(x_n, col, geo):
    """im2col for stride 1 and OW == W, a span per column row."""
    KH, KW, sh, sw, pt, pl, dh, dw, OH, OW = geo
    C, H, W = x_n.shape
    P = OH * OW
    xf = x_n.reshape(C * H * W)
    cf = col.reshape(col.size)
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                r0, d0, d1, shift, oh_lo, oh_hi, ow_lo, ow_hi = _same_width_span(
                    c, kh, kw, KH, KW, H, W, pt, pl, dh, dw, OH, OW)
                for p in range(r0, d0):
                    cf[U(p)] = 0
                for p in range(d0, d1):
                    cf[U(p)] = xf[U(p + shift)]
                for p in range(d1, r0 + P):
                    cf[U(p)] = 0
                for oh in range(oh_lo, oh_hi - 1):  # the entries wrapped between image rows
                    for p in range(r0 + oh * OW + ow_hi, r0 + (oh + 1) * OW + ow_lo):
                        cf[U(p)] = 0


@per_thread.by_address
def col2im_spans(dcol, dx_n, geo):
    """col2im for stride 1 and OW == W: zero the span's wrapped entries of dcol, then add the
    span. Each pixel gets its terms in col2im_rows's order, plus zeros from the
    wrapped entries: the same sums, except that a -0.0 pixel may read +0.0."""
    KH, KW, sh, sw, pt, pl, dh, dw, OH, OW = geo
    C, H, W = dx_n.shape
    df = dcol.reshape(dcol.size)
    xf = dx_n.reshape(C * H * W)
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                r0, d0, d1, shift, oh_lo, oh_hi, ow_lo, ow_hi = _same_width_span(
                    c, kh, kw, KH, KW, H, W, pt, pl, dh, dw, OH, OW)
                for oh in range(oh_lo, oh_hi - 1):
                    for p in range(r0 + oh * OW + ow_hi, r0 + (oh + 1) * OW + ow_lo):
                        df[U(p)] = 0
                for p in range(d0, d1):
                    xf[U(p + shift)] += df[U(p)]


def same_width(geo, W, OW):
    """True when the same-width loops apply: stride 1 with OW == W. geo: the layer's
    (KH, KW, sh, sw, pt, pb, pl, pr, dh, dw)."""
    return geo[2] == 1 and geo[3] == 1 and OW == W


def im2col_address(geo, W, OW, dtype):
    """The address, for ``run_loop``, of the layer's im2col loop compiled for ``dtype``: the
    same-width one when ``same_width``, else the row one."""
    loop = im2col_spans if same_width(geo, W, OW) else im2col_rows
    return per_thread.fixed_address(loop, dtype, _image_first)


def col2im_address(geo, W, OW, dtype):
    """As im2col_address, for the layer's col2im loop (asked for by backward only: the forward
    pass does not compile it)."""
    loop = col2im_spans if same_width(geo, W, OW) else col2im_rows
    return per_thread.fixed_address(loop, dtype, _columns_first)


def _image_first(dtype):
    """im2col's argument types: (image (C, H, W), columns (C·KH·KW, OH·OW), geo)."""
    dt = numba.from_dtype(np.dtype(dtype))
    return types.Array(dt, 3, "C"), types.Array(dt, 2, "C"), _LOOP_GEO


def _columns_first(dtype):
    """col2im's argument types: (columns, image, geo)."""
    image, columns, geo = _image_first(dtype)
    return columns, image, geo


_LOOP_GEO = types.UniTuple(types.int64, 10)


def run_loop(at, a, b, geo):
    """The im2col or col2im loop at ``at`` (``im2col_address``, ``col2im_address``) on
    (a, b, geo)."""
    at(a, b, geo)


@overload(run_loop, jit_options={"cache": True})
def _run_loop_nopython(at, a, b, geo):
    # the loops were compiled for exactly these types: anything else would be read wrongly
    arrays = (a, b)
    if not (at == types.int64 and geo == _LOOP_GEO
            and all(isinstance(v, types.Array) and v.layout == "C" and v.aligned
                    and v.mutable and v.dtype == a.dtype for v in arrays)
            and sorted(v.ndim for v in arrays) == [2, 3]):
        raise TypingError(f"conv.run_loop: arguments {(at, a, b, geo)} are not a loop's "
                          "(image, columns) or (columns, image), C-contiguous, and geo")

    def impl(at, a, b, geo):
        per_thread.call_fixed(at, (a, b, geo))
    return impl


@njit(cache=True)
def gemm_forward_sample(w2, col, out2, groups):
    """out2 (F, P) = w2 (F, Cg·KH·KW) @ col (C·KH·KW, P), one GEMM per group."""
    F, CgKK = w2.shape
    Fg = F // groups
    for g in range(groups):
        gemm(w2[g * Fg:(g + 1) * Fg], col[g * CgKK:(g + 1) * CgKK], out2[g * Fg:(g + 1) * Fg],
             False, False, 1.0, 0.0)


# Backward works through a sample's input channels in chunks whose column rows take at most
# this many bytes: the weight-gradient GEMM, the input-gradient GEMM and col2im then pass
# each chunk between them while it is still in the core's L2 cache (512 KB here) instead of
# streaming whole (C·KH·KW, OH·OW) buffers through L3 (2.9 MB per sample for widecnn's conv2,
# whose backward went from a median 104 to 82-86 ms per batch of 50 on two threads; chunks of
# 256 KB to 1 MB measured alike). Every smaller layer here is one chunk.
BACKWARD_CHUNK_BYTES = 512 << 10


@njit(cache=True)
def channels_per_chunk(Cg, taps, P, itemsize):
    """Input channels per backward chunk: as many as fit BACKWARD_CHUNK_BYTES, at least one."""
    return max(1, min(Cg, BACKWARD_CHUNK_BYTES // max(1, taps * P * itemsize)))


def weight_grad_partials(T, w, groups, dtype):
    """Zeroed per-thread weight-gradient partials (T, groups, Cg·KH·KW, F // groups)."""
    F, Cg, KH, KW = w.shape
    return np.zeros((T, groups, Cg * KH * KW, F // groups), dtype=dtype)


def weight_grad(dw_part, w_shape):
    """Sum the per-thread partials (T, groups, Cg·KH·KW, Fg) into dW (F, Cg, KH, KW)."""
    summed = dw_part.sum(axis=0)  # (groups, CgKK, Fg)
    return np.ascontiguousarray(summed.transpose(0, 2, 1)).reshape(w_shape)


@njit(cache=True)
def add_bias_sample(out2, b):
    """out2[f, :] += b[f]; out2 (F, P) C-contiguous, b (F,)."""
    F, P = out2.shape
    of = out2.reshape(F * P)
    for f in range(F):
        bf = b[f]
        for p in range(f * P, (f + 1) * P):
            of[U(p)] += bf


@njit(cache=True)
def add_row_sums_sample(dout2, db):
    """db[f] += Σ_p dout2[f, p], summed in float64; dout2 (F, P) C-contiguous, db (F,)."""
    F, P = dout2.shape
    df = dout2.reshape(F * P)
    P4 = P - P % 4
    for f in range(F):
        # four interleaved partial sums: one running sum is a chain of dependent float64
        # adds (~4 cycles each) and made this the slowest step of a first-layer backward
        s0 = s1 = s2 = s3 = 0.0
        base = f * P
        for p in range(base, base + P4, 4):
            s0 += df[U(p)]
            s1 += df[U(p + 1)]
            s2 += df[U(p + 2)]
            s3 += df[U(p + 3)]
        for p in range(base + P4, base + P):
            s0 += df[U(p)]
        db[f] += (s0 + s1) + (s2 + s3)


# One sample's forward and backward are kernels of their own, called from the per-thread
# workers by address (per_thread.call): a worker then holds none of their code, and LLVM
# optimises the GEMM calls and the chunk loop once, in the kernel, instead of once more in
# every worker that calls them (im2col and col2im are a level further down, by address too).
# Each takes (t, n, conv): thread t, sample n, and the layer's tuple from forward_sample or
# backward_sample below.

@per_thread.by_address
def _im2col_gemm_sample(t, n, conv):
    """Sample n's forward by im2col into the thread's (or the sample's) column slot and a GEMM
    per group: dest[n or t] (F, OH, OW) = conv(x[n]) + bias. at: the im2col loop's address."""
    (x, w2, b, has_bias, cols, keep, dest, dest_per_sample, KH, KW, sh, sw, pt, pb, pl, pr,
     dh, dw, groups, at, rows_at) = conv
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    F, OH, OW = dest.shape[1], dest.shape[2], dest.shape[3]
    conv2 = (dest[n] if dest_per_sample else dest[t]).reshape(F, OH * OW)
    if is_pointwise(KH, KW, sh, sw, pt, pb, pl, pr):
        col = x[n].reshape(C, H * W)
    else:
        col = cols[n] if keep else cols[t]
        run_loop(at, x[n], col, (KH, KW, sh, sw, pt, pl, dh, dw, OH, OW))
    if rows_at != 0:  # conv2 = w2·col by vector_linear's kernel, which adds into zeros
        flat = conv2.reshape(conv2.size)
        for i in range(flat.size):
            flat[i] = 0
        vector_linear.call(rows_at, (w2.reshape(w2.size), w2.shape[1], 1, col, conv2, 0, F))
    else:
        gemm_forward_sample(w2, col, conv2, groups)
    if has_bias:
        add_bias_sample(conv2, b)


@per_thread.by_address
def _direct_sample(t, n, conv):
    """Sample n's forward by the direct kernel at address ``at`` (direct_conv.address); b is
    zeros for a layer without bias, and no columns are used."""
    (x, w2, b, _, _, _, dest, dest_per_sample, KH, KW, _, _, _, _, _, _, _, _, _, at, _) = conv
    F, OH, OW = dest.shape[1], dest.shape[2], dest.shape[3]
    conv2 = (dest[n] if dest_per_sample else dest[t]).reshape(F, OH * OW)
    direct_conv.call(at, (x, n, w2, b, conv2, KH, KW, OH, OW))


@per_thread.by_address
def _filter_vector_sample(t, n, conv):
    """Sample n's forward by filter_vector_conv's kernel at address ``at``; wt is the weights
    transposed, (C·KH·KW, F); b is zeros for a layer without bias. No columns are used: for a
    padded layer cols[n or t] (C, (H + pt + pb)·(W + pl + pr)) receives the sample padded."""
    (x, wt, b, _, cols, keep, dest, dest_per_sample, KH, KW, _, _, pt, pb, pl, pr, _, _, _,
     at, _) = conv
    F, OH, OW = dest.shape[1], dest.shape[2], dest.shape[3]
    conv2 = (dest[n] if dest_per_sample else dest[t]).reshape(F, OH * OW)
    if pt + pb + pl + pr == 0:
        filter_vector_conv.call(at, (x, n, wt, b, conv2, KH, KW, OH, OW))
    else:
        xp = _padded_sample(x, n, cols[n] if keep else cols[t], pt, pb, pl, pr, True)
        filter_vector_conv.call(at, (xp, 0, wt, b, conv2, KH, KW, OH, OW))


@njit(cache=True)
def _padded_sample(x, n, slot, pt, pb, pl, pr, copy):
    """slot (C, Hp·Wp) seen as (1, C, Hp, Wp), Hp = H + pt + pb and Wp = W + pl + pr, holding
    x[n] zero-padded: copied there when ``copy``, else already there (kept from forward)."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    xp = slot.reshape(1, C, H + pt + pb, W + pl + pr)
    if copy:
        filter_vector_conv.pad_sample(x, n, xp[0], pt, pl)
    return xp


def forward_sample(x, w, b, has_bias, cols, keep, dest, dest_per_sample, geo, groups, method):
    """(at, conv) for ``per_thread.call(at, t, n, conv)``: sample n's forward on thread t.

    x (N, C, H, W); w (F, Cg, KH, KW); b (F,), zeros without bias; cols (T or N, C·KH·KW,
    OH·OW) column slots, slot n when ``keep`` else slot t (used by "im2col" only, and not for
    a pointwise layer; for "filter_vectors" on a padded layer, ``padded_shape`` slots); dest
    (T or N, F, OH, OW) receives the result, in slot n when ``dest_per_sample`` else t.
    method: ``forward_method(...)``.
    """
    w2 = _as_matrix(w)
    if method == "direct":
        at, sample = direct_conv.address(x.dtype), _direct_sample
    elif method == "filter_vectors":
        w2 = np.ascontiguousarray(w2.T)
        at, sample = filter_vector_conv.forward_address(x.dtype), _filter_vector_sample
    else:
        at = im2col_address(geo, x.shape[3], dest.shape[3], x.dtype)
        sample = _im2col_gemm_sample
    rows_at = 0
    if method == "im2col" and groups == 1 and uses_vector_products(
            dest.shape[2] * dest.shape[3], x.dtype):
        rows_at = vector_linear.accumulate_address(x.dtype)
    conv = (x, w2, b, has_bias, cols, keep, dest, dest_per_sample, *geo, groups, at, rows_at)
    return per_thread.address(sample, conv), conv


@per_thread.by_address
def _backward_sample(t, n, conv):
    """Add sample n's share of dW and db into thread t's partials and, if ``input_grad``, write
    dx[n]. dconvs[n or t] (F, OH·OW) holds the sample's output gradient; the columns are
    unfolded again unless ``kept`` from forward (cols[n]).

    dw_part[t] (groups, Cg·KH·KW, F // groups) is the weight gradient transposed: OpenBLAS ran
    ``col @ doutᵀ`` (M = Cg·KH·KW, N = F) at 124-126 GFLOP/s on one core against 95 for
    ``dout @ colᵀ`` at digitcnn's and widecnn's conv2 shapes; weight_grad() transposes the
    summed partials back once per step. Per group and chunk of input channels
    (channels_per_chunk): unfold the chunk's rows into col, dwT rows += col_rows @ doutᵀ,
    dcol_rows = W_rowsᵀ @ dout, col2im them into the chunk's channels of dx[n]. No sum is
    split by the chunks, but OpenBLAS's rounding of an entry depends on the shape of the
    product it is part of: widecnn's conv2 gradients differ from one-chunk ones in the last bit.
    """
    (x, w2, dconvs, dconv_per_sample, has_bias, dx, dw_part, db_part, cols, kept, dcols,
     KH, KW, sh, sw, pt, pb, pl, pr, dh, dw, groups, OH, OW, input_grad, unfold_at,
     fold_at, dconvsT, given_transposed, weight_grad_at, columns_at, dot_at,
     flipped, dpads, dxs, flipped_at) = conv
    loop = (KH, KW, sh, sw, pt, pl, dh, dw, OH, OW)
    if weight_grad_at != 0:
        _filter_vector_backward(t, n, conv)
        return
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    dconv2 = dconvs[n] if dconv_per_sample else dconvs[t]
    dwT, dcol = dw_part[t], dcols[t]
    col = cols[n] if kept else cols[t]
    pointwise = is_pointwise(KH, KW, sh, sw, pt, pb, pl, pr)
    taps = KH * KW
    Cg = C // groups
    Fg = w2.shape[0] // groups
    step = channels_per_chunk(Cg, taps, OH * OW, dcol.itemsize)
    x2 = x[n].reshape(C, H * W)
    no_bias = np.zeros(Fg, dtype=dwT.dtype)
    for g in range(groups):
        dout_g = dconv2[g * Fg:(g + 1) * Fg]
        for c0 in range(0, Cg, step):
            c1 = min(Cg, c0 + step)
            a, b = g * Cg + c0, g * Cg + c1  # this chunk's channels of x
            r0, r1 = c0 * taps, c1 * taps  # and its rows of w2[group] and dwT[g]
            if pointwise:
                rows = x2[a:b]  # im2col is the identity
            elif not kept:
                rows = col[:(b - a) * taps]
                run_loop(unfold_at, x[n, a:b], rows, loop)
            else:
                rows = col[a * taps:b * taps]
            if dot_at != 0:  # dwT rows += rows·dout_gᵀ, dot products along the pixels
                vector_linear.call(dot_at, (rows, dout_g, no_bias, dwT[g, r0:r1], 0,
                                            r1 - r0, 0, Fg, 1))
            else:
                gemm(rows, dout_g, dwT[g, r0:r1], False, True, 1.0, 1.0)
            if not input_grad:
                continue
            w_rows = w2[g * Fg:(g + 1) * Fg, r0:r1]
            if pointwise:
                # col2im is the identity too: the GEMM writes dx[n]'s channels directly
                gemm(w_rows, dout_g, dx[n].reshape(C, H * W)[a:b], True, False, 1.0, 0.0)
            else:
                drows = dcol[:(b - a) * taps]
                gemm(w_rows, dout_g, drows, True, False, 1.0, 0.0)
                run_loop(fold_at, drows, dx[n, a:b], loop)
    if has_bias and dot_at != 0:
        # db += dout·1, the same dot products (float32 lanes, then pairwise): a running
        # float64 sum per row took ~40 µs per sample at widecnn's conv1 (118k values)
        F = dconv2.shape[0]
        ones = np.ones((1, dconv2.shape[1]), dtype=dconv2.dtype)
        vector_linear.call(dot_at, (dconv2, ones, no_bias[:1], db_part[t].reshape(F, 1), 0, F,
                                    0, 1, 1))
    elif has_bias:
        add_row_sums_sample(dconv2, db_part[t])


def backward_sample(x, w, dconvs, dconv_per_sample, has_bias, dx, dw_part, db_part, cols, kept,
                    dcols, geo, groups, OH, OW, input_grad, dconvsT=None, given_transposed=False):
    """(at, conv) for ``per_thread.call(at, t, n, conv)``: sample n's backward on thread t.

    dconvs (T or N, F, OH·OW): the output gradient, read from slot n when ``dconv_per_sample``
    else from slot t (the worker writes it there). dx (N, C, H, W) zeroed, or empty without
    ``input_grad``; dw_part (T, groups, Cg·KH·KW, F // groups) and db_part (T, F) zeroed
    partials; cols: the kept forward columns (N slots) when ``kept``, else T scratch slots
    (for a filter-vector layer: its padded samples, ``padded_shape``, or nothing unpadded);
    dcols (T, C·KH·KW, OH·OW) scratch.

    dconvsT: for a layer whose weight gradient is filter_vector_conv's (``uses_filter_vectors``),
    (T, OH·OW, F) slots for the gradient transposed, which its kernel reads. With
    ``given_transposed`` the worker has written slot t itself (and dconvs is not read);
    otherwise the sample kernel transposes dconvs' slot into it. None for any other layer.
    """
    weight_grad_at = columns_at = 0
    # the weight gradient's products by vector_linear's dot products (over the OH·OW pixels)
    dot_at = (vector_linear.forward_address(x.dtype)
              if dconvsT is None and uses_vector_products(OH * OW, x.dtype) else 0)
    if dconvsT is None:
        dconvsT = np.zeros((1, 0, 0), dtype=x.dtype)
    else:
        weight_grad_at = filter_vector_conv.weight_grad_address(x.dtype)
        if input_grad and vector_linear.applies(OH * OW, x.dtype):
            columns_at = vector_linear.accumulate_address(x.dtype)
    flipped, dpads, dxs, flipped_at = _transposed_input_grad(x, w, geo, input_grad,
                                                             weight_grad_at != 0)
    if flipped_at != 0:
        columns_at = 0
    conv = (x, _as_matrix(w), dconvs, dconv_per_sample, has_bias, dx, dw_part, db_part, cols,
            kept, dcols, *geo, groups, OH, OW, input_grad,
            im2col_address(geo, x.shape[3], OW, x.dtype),
            col2im_address(geo, x.shape[3], OW, x.dtype), dconvsT, bool(given_transposed),
            weight_grad_at, columns_at, dot_at, flipped, dpads, dxs, flipped_at)
    return per_thread.address(_backward_sample, conv), conv


# a filter-vector layer's input gradient runs as a filter-vector convolution of the padded
# output gradient when its C input channels, rounded up to whole filter blocks, waste at most
# this share of the work: widecnn's conv2 (150 -> 192 channels), not digitcnn's (32 -> 64)
MAX_PADDED_CHANNELS = 1.3


def _block_channels(C, dtype):
    """C rounded up to whole filter blocks of filter_vector_conv."""
    block = filter_vector_conv.filter_block(dtype)
    return -(-C // block) * block


def uses_transposed_input_grad(w_shape, geo, dtype):
    """True when a filter-vector layer's dx is filter_vector_conv's forward kernel run on its
    zero-padded output gradient with the weights flipped and transposed (a stride-1 layer's
    dx is that correlation): no columns, no col2im. Needs padding <= kernel - 1 each side."""
    F, C, KH, KW = w_shape
    _, _, _, _, pt, pb, pl, pr, _, _ = geo
    padded = _block_channels(C, dtype)
    return (max(pt, pb) <= KH - 1 and max(pl, pr) <= KW - 1 and padded <= MAX_PADDED_CHANNELS * C
            and F * KH * KW * padded * np.dtype(dtype).itemsize
            <= filter_vector_conv.MAX_WEIGHT_BYTES * 2)


def _transposed_input_grad(x, w, geo, input_grad, filter_vectors):
    """(flipped, dpads, dxs, address) for ``uses_transposed_input_grad``, or stand-ins and 0.

    flipped (F·KH·KW, C'): wflip[(f·KH + kh)·KW + kw, c] = w[f, c, KH-1-kh, KW-1-kw], zero for
    the c >= C that round C up to C' (whole filter blocks); dpads (T, F, (H + KH - 1)·(W + KW
    - 1)) zeroed slots for the padded gradient (its border stays zero); dxs (T, C', H·W) the
    kernel's output, whose first C planes are dx[n].
    """
    dtype = x.dtype
    stand_in = np.zeros((1, 1), dtype=dtype)
    if not (input_grad and filter_vectors and uses_transposed_input_grad(w.shape, geo, dtype)):
        return stand_in, np.zeros((1, 0, 0), dtype=dtype), np.zeros((1, 0, 0), dtype=dtype), 0
    F, C, KH, KW = w.shape
    _, _, H, W = x.shape
    padded = _block_channels(C, dtype)
    flipped = np.zeros((F * KH * KW, padded), dtype=dtype)
    flipped[:, :C] = w[:, :, ::-1, ::-1].transpose(0, 2, 3, 1).reshape(F * KH * KW, C)
    T = _n_threads(x.shape[0])
    dpads = np.zeros((T, F, (H + KH - 1) * (W + KW - 1)), dtype=dtype)
    dxs = np.zeros((T, padded, H * W), dtype=dtype)
    return flipped, dpads, dxs, filter_vector_conv.forward_address(dtype)


@njit(cache=True)
def _input_grad_by_correlation(t, n, doutT, dx, flipped, dpads, dxs, at, KH, KW, pt, pl, OH,
                               OW):
    """dx[n] = the correlation of the zero-padded gradient with the flipped weights, by
    filter_vector_conv's forward kernel at ``at`` (see uses_transposed_input_grad)."""
    F = doutT.shape[1]
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    Hq, Wq = H + KH - 1, W + KW - 1
    dpad = dpads[t].reshape(1, F, Hq, Wq)
    qt, ql = KH - 1 - pt, KW - 1 - pl
    for oh in range(OH):
        for ow in range(OW):
            p = oh * OW + ow
            for f in range(F):
                dpad[0, f, qt + oh, ql + ow] = doutT[p, f]
    out = dxs[t]
    zeros = np.zeros(out.shape[0], dtype=out.dtype)
    filter_vector_conv.call(at, (dpad, 0, flipped, zeros, out, KH, KW, H, W))
    plane = dx[n].reshape(C, H * W)
    for c in range(C):
        for i in range(H * W):
            plane[c, i] = out[c, i]


@njit(cache=True)
def _filter_vector_backward(t, n, conv):
    """_backward_sample for a layer where filter_vector_conv applies (stride 1, one group):
    dwT += the kernel's weight gradient from doutᵀ; dx[n] = col2im(w2ᵀ @ dout), or the
    correlation of the padded gradient with the flipped weights (``flipped_at``);
    db += doutᵀ's column sums. doutᵀ is thread t's dconvsT slot (transposed here from the
    (F, OH·OW) gradient unless the worker wrote it so)."""
    (x, w2, dconvs, dconv_per_sample, has_bias, dx, dw_part, db_part, cols, kept, dcols,
     KH, KW, sh, sw, pt, pb, pl, pr, dh, dw, groups, OH, OW, input_grad, unfold_at,
     fold_at, dconvsT, given_transposed, weight_grad_at, columns_at, dot_at,
     flipped, dpads, dxs, flipped_at) = conv
    doutT = dconvsT[t]
    if not given_transposed:
        filter_vector_conv.transpose_plane(dconvs[n] if dconv_per_sample else dconvs[t], doutT)
    if pt + pb + pl + pr == 0:
        filter_vector_conv.call(weight_grad_at, (x, n, doutT, dw_part[t, 0], KH, KW, OH, OW))
    else:  # on the sample padded: kept from forward in cols[n], else padded again into cols[t]
        xp = _padded_sample(x, n, cols[n] if kept else cols[t], pt, pb, pl, pr, not kept)
        filter_vector_conv.call(weight_grad_at, (xp, 0, doutT, dw_part[t, 0], KH, KW, OH, OW))
    if input_grad and flipped_at != 0:
        _input_grad_by_correlation(t, n, doutT, dx, flipped, dpads, dxs, flipped_at, KH, KW, pt,
                                   pl, OH, OW)
    elif input_grad:
        dcol = dcols[t]
        if columns_at != 0:
            # dcol = w2ᵀ·dout by vector_linear's kernel (which adds into zeros), reading the
            # gradient's (F, OH·OW) rows: 25 against 38 µs for OpenBLAS at digitcnn's conv2
            dout2 = dconvs[n] if dconv_per_sample else dconvs[t]
            if given_transposed:
                filter_vector_conv.transpose_plane(doutT, dconvs[t])
                dout2 = dconvs[t]
            dflat = dcol.reshape(dcol.size)
            for i in range(dflat.size):
                dflat[i] = 0
            taps = w2.shape[1]
            vector_linear.call(columns_at, (w2.reshape(w2.size), 1, taps, dout2, dcol, 0, taps))
        else:
            gemm(w2, doutT, dcol, True, True, 1.0, 0.0)
        run_loop(fold_at, dcol, dx[n], (KH, KW, sh, sw, pt, pl, dh, dw, OH, OW))
    if has_bias:
        add_column_sums_sample(doutT, db_part[t])


@njit(cache=True)
def add_column_sums_sample(doutT, db):
    """db[f] += Σ_p doutT[p, f], summed in float64; doutT (P, F) C-contiguous, db (F,)."""
    P, F = doutT.shape
    sums = np.zeros(F, np.float64)
    for p in range(P):
        for f in range(F):
            sums[f] += doutT[p, f]
    for f in range(F):
        db[f] += sums[f]


@per_thread.by_address
def _samples_thread(t, args):
    """Thread t's samples n of ``sample(t, n, conv)``, the kernel at ``at``: conv2d's worker,
    forward and backward."""
    at, conv, N, T = args
    for n in range((t * N) // T, ((t + 1) * N) // T):
        per_thread.call(at, t, n, conv)


def _kernel_array(a, dtype):
    """C-contiguous writeable array of ``dtype`` (read-only ones would compile a new signature)."""
    a = np.ascontiguousarray(a, dtype=dtype)
    return a if a.flags.writeable else a.copy()


def _n_threads(N):
    return max(1, min(numba.get_num_threads(), N))


def _geometry(w, stride, padding, dilation):
    KH, KW = int(w.shape[2]), int(w.shape[3])
    sh, sw = (int(s) for s in stride)
    pt, pb, pl, pr = (int(p) for p in padding)
    dh, dw = (int(d) for d in dilation)
    return KH, KW, sh, sw, pt, pb, pl, pr, dh, dw


def _as_matrix(w):
    """w (F, Cg, KH, KW) as the GEMM's (F, Cg·KH·KW) (spelled out: F may be 0)."""
    F, Cg, KH, KW = w.shape
    return w.reshape(F, Cg * KH * KW)


# output pixels from which an im2col layer's products run on vector_linear's kernels. Measured
# on the 2-core Zen 5, backward per batch on two threads, OpenBLAS against the kernels: lenet's
# conv2 (64 pixels) 594 against 762 µs, its conv1 (576) 329 against 226, mitxcnn's conv1 (676)
# 294 against 180
MIN_VECTOR_PIXELS = 256


def uses_vector_products(pixels, dtype):
    """True when an im2col layer with this many output pixels runs its forward product (one
    group) and its weight and bias gradients on vector_linear's kernels."""
    return pixels >= MIN_VECTOR_PIXELS and vector_linear.applies(pixels, dtype)


def uses_direct(x, w, geo, groups, OW):
    """True when the forward pass runs direct_conv's kernel instead of im2col + GEMM."""
    return direct_conv.applies(w.shape, geo, groups, OW, x.dtype)


def uses_filter_vectors(x, w, geo, groups):
    """True when the forward pass and the weight gradient run filter_vector_conv's kernels."""
    return filter_vector_conv.applies(w.shape, geo, groups, x.dtype)


def forward_method(x, w, geo, groups, OW):
    """The forward kernel a layer runs: "direct" (direct_conv.py), "filter_vectors"
    (filter_vector_conv.py) or "im2col" (im2col + GEMM); the first two need no columns."""
    if uses_direct(x, w, geo, groups, OW):
        return "direct"
    if uses_filter_vectors(x, w, geo, groups):
        return "filter_vectors"
    return "im2col"


def padded_shape(slots, x, geo):
    """(slots, C, (H + pt + pb)·(W + pl + pr)): zero-padded copies of samples, which
    filter_vector_conv's kernels read for a padded layer; (1, 0, 0) for an unpadded one."""
    _, C, H, W = x.shape
    _, _, _, _, pt, pb, pl, pr, _, _ = geo
    if pt + pb + pl + pr == 0:
        return (1, 0, 0)
    return (slots, C, (H + pt + pb) * (W + pl + pr))


def _slots_shape(T, x, geo, OH, OW, method):
    """The per-thread slots a forward ``method`` needs: columns, padded samples or none."""
    if method == "filter_vectors":
        return padded_shape(T, x, geo)
    return _cols_shape(T, x.shape[1], OH, OW, geo, method == "im2col")


def _cols_shape(T, C, OH, OW, geo, columns=True):
    """Per-thread column buffers; none are needed when im2col is the identity or the pass
    needs no columns (``columns`` False)."""
    if not columns or is_pointwise(*geo[:8]):
        return (T, 0, 0)
    return (T, C * geo[0] * geo[1], OH * OW)


def transposed_gradient_slots(x, w, geo, groups, T, OH, OW):
    """(T, OH·OW, F) zeroed slots for backward_sample's dconvsT when the layer's weight
    gradient is filter_vector_conv's, else None."""
    if not uses_filter_vectors(x, w, geo, groups):
        return None
    return np.zeros((T, OH * OW, w.shape[0]), dtype=x.dtype)


def conv2d_forward(x, w, b, stride, padding, dilation, groups):
    """Grouped, strided, dilated, zero-padded 2-D convolution (torch.nn.functional.conv2d).

    Inputs:
    - x: (N, C, H, W)
    - w: (F, C // groups, KH, KW)
    - b: (F,) or None
    - stride: (sh, sw); padding: (top, bottom, left, right); dilation: (dh, dw); groups: int

    Returns (out, cache): out (N, F, OH, OW) in x's dtype, with
    OH = (H + top + bottom - dh·(KH-1) - 1) // sh + 1 and likewise OW.
    """
    dtype = x.dtype
    x = _kernel_array(x, dtype)
    w = _kernel_array(w, dtype)
    N, C, H, W = x.shape
    F = w.shape[0]
    geo = _geometry(w, stride, padding, dilation)
    KH, KW, sh, sw, pt, pb, pl, pr, dh, dw = geo
    groups = int(groups)
    OH = out_size(H, pt, pb, KH, sh, dh)
    OW = out_size(W, pl, pr, KW, sw, dw)
    has_bias = b is not None
    bias = _kernel_array(b, dtype) if has_bias else np.zeros(F, dtype=dtype)
    # zeros, not empty: under NUMBA_DISABLE_JIT the GEMM fallback computes beta·c with beta = 0,
    # and 0·NaN from uninitialised memory would be NaN
    out = np.zeros((N, F, OH, OW), dtype=dtype)
    cache = (x, w, has_bias, geo, groups)
    if N == 0:
        return out, cache
    T = _n_threads(N)
    method = forward_method(x, w, geo, groups, OW)
    cols = np.zeros(_slots_shape(T, x, geo, OH, OW, method), dtype=dtype)
    at, conv = forward_sample(x, w, bias, has_bias, cols, False, out, True, geo, groups, method)
    per_thread.run(_samples_thread, T, (at, conv, N, T))
    return out, cache


def conv2d_backward(dout, cache, input_grad=True):
    """Gradients of conv2d_forward.

    Inputs:
    - dout: (N, F, OH, OW), upstream gradient
    - cache: from conv2d_forward
    - input_grad: False skips dx (returned as None), as torch does for an input that does not
      require grad

    Returns (dx, dw, db): dx (N, C, H, W), dw (F, C // groups, KH, KW), db (F,) or None.
    """
    x, w, has_bias, geo, groups = cache
    dtype = x.dtype
    N, C, H, W = x.shape
    F = w.shape[0]
    dout = _kernel_array(dout, dtype)
    OH, OW = dout.shape[2], dout.shape[3]
    dx = np.zeros_like(x) if input_grad else np.zeros((0,) + x.shape[1:], dtype=dtype)
    T = _n_threads(N)
    dw_part = weight_grad_partials(T, w, groups, dtype)
    db_part = np.zeros((T, F), dtype=dtype)
    if N > 0:
        dconvsT = transposed_gradient_slots(x, w, geo, groups, T, OH, OW)
        cols = np.zeros(_cols_shape(T, C, OH, OW, geo) if dconvsT is None
                        else padded_shape(T, x, geo), dtype=dtype)
        dcols = np.zeros(_cols_shape(T, C, OH, OW, geo), dtype=dtype)
        at, conv = backward_sample(x, w, dout.reshape(N, F, OH * OW), True, has_bias, dx,
                                   dw_part, db_part, cols, False, dcols, geo,
                                   groups, OH, OW, input_grad, dconvsT)
        per_thread.run(_samples_thread, T, (at, conv, N, T))
    dw = weight_grad(dw_part, w.shape)
    db = db_part.sum(axis=0) if has_bias else None
    return (dx if input_grad else None), dw, db
