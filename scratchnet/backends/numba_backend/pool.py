"""Max pooling kernels: the N·C planes split across threads, torch's scan inside each window."""
import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from ..numpy_backend.pool import pool_output_size
from .activation import launch
from .conv import U
from .simd import VECTOR_BYTES, element_pointer, splat, vector_type

__all__ = ["maxpool2d_forward", "maxpool2d_backward"]


@njit(cache=True)
def _taps(size, out_size, K, S, P, D):
    """First in-bounds tap of each window along one axis and how many taps are in bounds."""
    first = np.empty(out_size, dtype=np.int64)
    count = np.empty(out_size, dtype=np.int64)
    for o in range(out_size):
        start = o * S - P
        stop = min(start + (K - 1) * D + 1, size)
        # padding is -inf and never wins, so windows simply skip it (as torch's loop does)
        while start < 0:
            start += D
        first[o] = start
        count[o] = (stop - start + D - 1) // D
    return first, count


@njit(cache=True)
def _window_2x2_exact(a0, a1, a2, a3, k0, W):
    """The general scan over one 2×2 window (row-major; strictly greater or NaN takes over):
    (max, its flat index), k0 being the window's top-left index."""
    t = (a1 > a0) | (a1 != a1)
    m = a1 if t else a0
    j = 1 if t else 0
    t = (a2 > m) | (a2 != a2)
    m = a2 if t else m
    j = W if t else j
    t = (a3 > m) | (a3 != a3)
    m = a3 if t else m
    j = W + 1 if t else j
    return m, k0 + j


@njit(cache=True)
def _outputs_2x2(xf, of, jf, r0, r1, d, k0, W, lo, hi):
    """Outputs lo..hi-1 of one output row of the plain 2×2 pool, one at a time: xf, of, jf the
    flat input, output and index planes; r0, r1 the flat offsets of the window's two input
    rows, d of the output row, k0 the top row's offset within its plane."""
    for ow in range(lo, hi):
        c = 2 * ow
        a0 = xf[U(r0 + c)]
        a1 = xf[U(r0 + c + 1)]
        a2 = xf[U(r1 + c)]
        a3 = xf[U(r1 + c + 1)]
        if (a0 != a0) | (a1 != a1) | (a2 != a2) | (a3 != a3):
            m, k = _window_2x2_exact(a0, a1, a2, a3, k0 + c, W)
            of[U(d + ow)] = m
            jf[U(d + ow)] = k
            continue
        # no NaN: the first maximum in row-major order (later ties don't take over)
        m = a0
        j = 0
        t = a1 > m
        m = a1 if t else m
        j = 1 if t else j
        t = a2 > m
        m = a2 if t else m
        j = W if t else j
        t = a3 > m
        m = a3 if t else m
        j = W + 1 if t else j
        of[U(d + ow)] = m
        jf[U(d + ow)] = k0 + c + j


def _pool_group(vector_bytes):
    """An intrinsic for V consecutive outputs of the plain 2×2 pool (V values in
    ``vector_bytes``): the window scan of _outputs_2x2 with vector compares and selects."""
    @intrinsic
    def pool_group(typingctx, xf, r0, of, jf, d, k0, W):
        """Outputs d .. d+V-1 of of/jf from the windows at xf[r0 + 2l : r0 + 2l + 2] and
        xf[r0 + W + 2l : ... + 2] (l < V), indices k0 + 2l + j. Returns True, and writes
        nothing, when any of the 4V inputs is NaN (the caller then scans one at a time)."""
        sig = types.boolean(xf, r0, of, jf, d, k0, W)

        def codegen(context, builder, signature, args):
            x_array, r0_v, out_array, index_array, d_v, k0_v, W_v = args
            vector = vector_type(context, xf, vector_bytes)
            V = vector.count
            i32, i64 = ir.IntType(32), ir.IntType(64)
            align = vector_bytes // V
            pair = ir.VectorType(vector.element, 2 * V)

            def row(at):  # 2V consecutive inputs, split into the windows' left and right
                values = builder.load(builder.bitcast(
                    element_pointer(context, builder, xf, x_array, at), pair.as_pointer()),
                    align=align)
                pick = [ir.Constant(ir.VectorType(i32, V), [2 * l + side for l in range(V)])
                        for side in (0, 1)]
                undefined = ir.Constant(pair, ir.Undefined)
                return [builder.shuffle_vector(values, undefined, p) for p in pick]

            a0, a1 = row(r0_v)
            a2, a3 = row(builder.add(r0_v, W_v))
            offsets = ir.VectorType(i64, V)
            best, j = a0, ir.Constant(offsets, None)
            for a, step in ((a1, ir.Constant(i64, 1)), (a2, W_v),
                            (a3, builder.add(W_v, ir.Constant(i64, 1)))):
                # strictly greater takes over, in the scan's order: ties keep the first
                greater = builder.fcmp_ordered(">", a, best)
                best = builder.select(greater, a, best)
                j = builder.select(greater, splat(builder, offsets, step), j)
            nan = builder.fcmp_unordered("uno", a0, a0)
            for a in (a1, a2, a3):
                nan = builder.or_(nan, builder.fcmp_unordered("uno", a, a))
            any_nan = builder.icmp_unsigned("!=", builder.bitcast(nan, ir.IntType(V)),
                                            ir.Constant(ir.IntType(V), 0))
            with builder.if_then(builder.not_(any_nan), likely=True):
                builder.store(best, builder.bitcast(
                    element_pointer(context, builder, of, out_array, d_v), vector.as_pointer()),
                    align=align)
                lanes_ = ir.Constant(offsets, [2 * l for l in range(V)])
                index = builder.add(builder.add(splat(builder, offsets, k0_v), lanes_), j)
                builder.store(index, builder.bitcast(
                    element_pointer(context, builder, jf, index_array, d_v),
                    offsets.as_pointer()), align=8)
            return any_nan

        return sig, codegen

    return pool_group


_pool_group_wide = _pool_group(VECTOR_BYTES)  # 8 float32 or 4 float64 outputs
_pool_group_narrow = _pool_group(VECTOR_BYTES // 2)  # 4 float32 or 2 float64
# intrinsics do not exist with the JIT off: the one-at-a-time scan runs then
_VECTORS = not numba.config.DISABLE_JIT


@njit(cache=True)
def _forward_span_2x2(x, out, index, lo, hi):
    """The tutorials' MaxPool2d(2): kernel 2, stride 2, no padding, no dilation.

    Same result as the general scan (row-major within the window, strictly greater or NaN
    takes over). Output rows of at least 4 float32 (2 float64) outputs go V at a time through
    ``_pool_group`` (8 or 4 float32 lanes): compares and selects on vectors, then one vector
    store of the maxima and one of the indices (float32, one core, fresh conv-sized data:
    3.1-4.3 ns per output one at a time, 0.9-1.8 ns so; digitcnn's first pool 17.6 → 5.3 µs
    a sample);
    a group with a NaN among its inputs, and a row's last outputs that no group covers, go
    through _outputs_2x2. There, too, windows without NaN take plain ``a > m`` comparisons
    (``maxss`` and integer ``cmov``) and only a window with a NaN the exact scan: LLVM lowers a
    select between two floats to a branch on x86, and with the NaN tests folded into each
    comparison those branches followed the data and mispredicted about half the time (16 ns
    per output on real conv outputs).
    """
    H, W = x.shape[1], x.shape[2]
    OH, OW = out.shape[1], out.shape[2]
    # flat arrays and unsigned offsets: no per-row views (each costs reference counting) and
    # no negative-index wrapping
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    jf = index.reshape(index.size)
    wide = VECTOR_BYTES // xf.itemsize
    narrow = wide // 2
    for p in range(lo, hi):
        for oh in range(OH):
            k0 = 2 * oh * W
            r0 = p * H * W + k0
            d = (p * OH + oh) * OW
            V = wide if OW >= wide else narrow
            if not _VECTORS or OW < V:
                _outputs_2x2(xf, of, jf, r0, r0 + W, d, k0, W, 0, OW)
                continue
            # groups of V outputs; the last ends at OW, overlapping the one before (the same
            # values written twice)
            for g in range(0, OW, V):
                ow0 = min(g, OW - V)
                c = 2 * ow0
                if V == wide:
                    has_nan = _pool_group_wide(xf, r0 + c, of, jf, d + ow0, k0 + c, W)
                else:
                    has_nan = _pool_group_narrow(xf, r0 + c, of, jf, d + ow0, k0 + c, W)
                if has_nan:
                    _outputs_2x2(xf, of, jf, r0, r0 + W, d, k0, W, ow0, ow0 + V)


@njit(cache=True)
def is_plain_2x2(KH, KW, SH, SW, PH, PW, DH, DW, H, W, OH, OW):
    """True for MaxPool2d(2) windows that all lie inside the input (``_forward_span_2x2``)."""
    return (KH == 2 and KW == 2 and SH == 2 and SW == 2 and PH == 0 and PW == 0 and DH == 1
            and DW == 1 and 2 * OH <= H and 2 * OW <= W)


@njit(cache=True)
def _forward_span(x, KH, KW, SH, SW, PH, PW, DH, DW, out, index, lo, hi):
    P, H, W = x.shape
    OH, OW = out.shape[1], out.shape[2]
    if is_plain_2x2(KH, KW, SH, SW, PH, PW, DH, DW, H, W, OH, OW):
        _forward_span_2x2(x, out, index, lo, hi)
        return
    h_first, h_count = _taps(H, OH, KH, SH, PH, DH)
    w_first, w_count = _taps(W, OW, KW, SW, PW, DW)
    planes = x.reshape(P, H * W)
    # one output row at a time, window row by window row: longer inner loops than
    # window-by-window, about 1.5x faster
    best_val = np.empty(OW, dtype=x.dtype)
    best_idx = np.empty(OW, dtype=np.int64)
    for p in range(lo, hi):
        plane = planes[p]
        for oh in range(OH):
            for ow in range(OW):
                best_val[ow] = -np.inf
                best_idx[ow] = h_first[oh] * W + w_first[ow]
            for a in range(h_count[oh]):
                row = (h_first[oh] + a * DH) * W
                for ow in range(OW):
                    m = best_val[ow]
                    k = best_idx[ow]
                    for b in range(w_count[ow]):
                        j = row + w_first[ow] + b * DW
                        v = plane[j]
                        # torch's rule, in its row-major scan: strictly greater values and
                        # every NaN take over (ties keep the first max, the last NaN wins)
                        if v > m or v != v:
                            m = v
                            k = j
                    best_val[ow] = m
                    best_idx[ow] = k
            # element loops, not slice assignments: numba's slice setitem alone made this
            # function take ~3 s longer to compile
            for ow in range(OW):
                out[p, oh, ow] = best_val[ow]
                index[p, oh, ow] = best_idx[ow]


def pool_planes(x, pool, out, index):
    """Max-pool every plane of x (P, H, W) into out, index (P, OH, OW).

    ``pool``: the window's (KH, KW, SH, SW, PH, PW, DH, DW), or ``()`` when it is a plain 2×2
    (``is_plain_2x2``). Why the empty tuple: compiled code picks the kernel from the argument's
    *type*, so a caller such as the fused conv worker compiles only the 2×2 path, not the general
    scan too (2.4 s less compile time for that worker here). This body runs with the JIT off.
    """
    if len(pool) == 0:
        _forward_span_2x2(x, out, index, 0, x.shape[0])
    else:
        _forward_span(x, *pool, out, index, 0, x.shape[0])


@overload(pool_planes, jit_options={"cache": True})
def _pool_planes_nopython(x, pool, out, index):
    if len(pool) == 0:
        def plain_2x2(x, pool, out, index):
            _forward_span_2x2(x, out, index, 0, x.shape[0])
        return plain_2x2

    def general(x, pool, out, index):
        KH, KW, SH, SW, PH, PW, DH, DW = pool
        _forward_span(x, KH, KW, SH, SW, PH, PW, DH, DW, out, index, 0, x.shape[0])
    return general


@njit(cache=True, parallel=True)
def _forward_parallel(x, KH, KW, SH, SW, PH, PW, DH, DW, out, index, chunks):
    P = x.shape[0]
    for c in prange(chunks):
        _forward_span(x, KH, KW, SH, SW, PH, PW, DH, DW, out, index,
                      c * P // chunks, (c + 1) * P // chunks)


@njit(cache=True)
def _backward_span(dout, index, dx, lo, hi):
    OH, OW = dout.shape[1], dout.shape[2]
    for p in range(lo, hi):
        for oh in range(OH):
            for ow in range(OW):
                # += because overlapping windows can pick the same element
                dx[p, index[p, oh, ow]] += dout[p, oh, ow]


@njit(cache=True, parallel=True)
def _backward_parallel(dout, index, dx, chunks):
    P = dout.shape[0]
    for c in prange(chunks):
        _backward_span(dout, index, dx, c * P // chunks, (c + 1) * P // chunks)


def maxpool2d_forward(x, kernel_size, stride, padding, dilation, ceil_mode):
    """Max over each (dilated) window; padding counts as -inf.

    x: (N, C, H, W); kernel_size, stride, padding (symmetric), dilation: pairs (h, w).
    Returns out (N, C, OH, OW) and a cache (flat ``h·W + w`` argmax per output, int64, and
    x's shape).
    """
    N, C, H, W = x.shape
    (KH, KW), (SH, SW), (PH, PW), (DH, DW) = kernel_size, stride, padding, dilation
    OH = pool_output_size(H, KH, SH, PH, DH, ceil_mode)
    OW = pool_output_size(W, KW, SW, PW, DW, ceil_mode)
    P = N * C
    out = np.empty((P, OH, OW), dtype=x.dtype)
    index = np.empty((P, OH, OW), dtype=np.int64)
    launch(_forward_span, _forward_parallel, P, P * OH * OW * KH * KW,
           np.ascontiguousarray(x).reshape(P, H, W), KH, KW, SH, SW, PH, PW, DH, DW, out, index)
    return out.reshape(N, C, OH, OW), (index.reshape(N, C, OH, OW), x.shape)


def maxpool2d_backward(dout, cache):
    """Each output's gradient goes to the one input element saved in forward.

    dout: (N, C, OH, OW). Returns dx: (N, C, H, W).
    """
    index, x_shape = cache
    N, C, H, W = x_shape
    P, OH, OW = N * C, index.shape[2], index.shape[3]
    dx = np.zeros((P, H * W), dtype=dout.dtype)
    launch(_backward_span, _backward_parallel, P, P * (H * W + OH * OW),
           np.ascontiguousarray(dout).reshape(P, OH, OW),
           np.ascontiguousarray(index).reshape(P, OH, OW), dx)
    return dx.reshape(x_shape)
