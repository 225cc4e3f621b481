"""The register-blocked linear kernels (vector_linear.py): which calls take them, and that the
forward pass and both gradient products are torch's for every row, output and feature, over
short blocks of rows, outputs and columns, writing nothing outside the ranges asked for.

The kernels run on any x86-64 CPU (LLVM splits the 512-bit operations where AVX-512 is
missing), so the kernel tests run everywhere; only linear.py's choice of them (``applies``)
depends on the CPU, and the layer tests say when it was not taken.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scratchnet.backend import ops
from scratchnet.backends.numba_backend import conv, simd
from scratchnet.backends.numba_backend import vector_linear as vl
from tests.helpers import DTYPES, assert_close, to_torch


def shapes(dtype):
    """(N, K, O): rows, input features, outputs. K around the vector width V (16 float32, 8
    float64) and the column block B (4·V): tails of the dot products, overlapping blocks."""
    V = simd.lanes(dtype, simd.WIDE_VECTOR_BYTES)
    B = vl.row_block(dtype)
    return [
        (1, B, 1),            # one row, one output, one block
        (5, B + 1, 7),        # rows and outputs one past a block; a one-feature tail
        (4, 2 * B, 6),        # exact blocks everywhere
        (9, B + V + 3, 13),   # a short column block overlapping the one before
        (32, 784, 128),       # mlp128's first layer at its batch size
        (3, 2 * B + V, 2),    # three column blocks, the last overlapping by 3·V
    ]


CASES = [(dtype, shape) for dtype in DTYPES for shape in shapes(dtype)]
IDS = [f"{np.dtype(d).name}-N{n}-K{k}-O{o}" for d, (n, k, o) in CASES]


def _arrays(shape, dtype, seed=0):
    N, K, O = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, K)).astype(dtype)
    w = rng.standard_normal((O, K)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype)
    dout = rng.standard_normal((N, O)).astype(dtype)
    return x, w, b, dout


def _ranges(n):
    """Sub-ranges [lo, hi) of 0..n a thread could be given: all, a head and a tail."""
    return sorted({(0, n), (0, max(1, n // 2)), (n // 2, n)} - {(n, n)})


@pytest.mark.parametrize("dtype,shape", CASES, ids=IDS)
def test_forward_rows_matches_torch(dtype, shape):
    """out[n0:n1, o0:o1] = x·wᵀ + b as torch's F.linear, or += with ``add``; every other entry
    left as it was."""
    x, w, b, _ = _arrays(shape, dtype)
    N, K, O = shape
    want = F.linear(to_torch(x), to_torch(w), to_torch(b)).numpy()
    for n0, n1 in _ranges(N):
        for o0, o1 in _ranges(O):
            out = np.full((N, O), np.nan, dtype=dtype)
            vl.forward_rows(x, w, b, out, n0, n1, o0, o1, 0)
            assert_close(out[n0:n1, o0:o1], want[n0:n1, o0:o1], dtype, "out")
            outside = np.ones((N, O), bool)
            outside[n0:n1, o0:o1] = False
            assert np.isnan(out[outside]).all()
            # add: out += x·wᵀ + b, each entry once (short blocks repeat a row or output)
            start = np.random.default_rng(1).standard_normal((N, O)).astype(dtype)
            out = start.copy()
            vl.forward_rows(x, w, b, out, n0, n1, o0, o1, 1)
            assert_close(out[n0:n1, o0:o1], start[n0:n1, o0:o1] + want[n0:n1, o0:o1], dtype,
                         "out += ")
            np.testing.assert_array_equal(out[outside], start[outside])


@pytest.mark.parametrize("dtype,shape", CASES, ids=IDS)
def test_accumulate_rows_gives_both_gradients(dtype, shape):
    """dW = doutᵀ·x and dx = dout·w, row range by row range, against torch's autograd; rows
    outside the range keep their zeros and nothing past the array is written."""
    x, w, b, dout = _arrays(shape, dtype)
    N, K, O = shape
    tx, tw = to_torch(x, requires_grad=True), to_torch(w, requires_grad=True)
    F.linear(tx, tw, to_torch(b)).backward(to_torch(dout))
    flat = dout.reshape(-1)
    margin = 64
    for (rows, row_step, sum_step, B, want) in [
            (O, 1, O, x, tw.grad.numpy()),       # dW: S(o, n) = dout[n, o]
            (N, O, 1, w, tx.grad.numpy())]:      # dx: S(n, o) = dout[n, o]
        for r0, r1 in _ranges(rows):
            buffer = np.full(rows * K + 2 * margin, 7.0, dtype=dtype)
            c = buffer[margin:margin + rows * K].reshape(rows, K)
            c[...] = 0
            vl.accumulate_rows(flat, row_step, sum_step, B, c, r0, r1)
            assert_close(c[r0:r1], want[r0:r1], dtype, "rows")
            assert not c[:r0].any() and not c[r1:].any()
            assert (buffer[:margin] == 7.0).all() and (buffer[-margin:] == 7.0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_values_propagate_like_torch(dtype):
    """An inf or NaN in x or w reaches the same outputs and gradient entries as in torch."""
    x, w, b, dout = _arrays((6, 2 * vl.row_block(dtype) + 5, 7), dtype)
    x[1, 3], x[4, -1] = np.inf, np.nan
    w[2, 0] = -np.inf
    out = np.empty((6, 7), dtype=dtype)
    vl.forward_rows(x, w, b, out, 0, 6, 0, 7, 0)
    tx, tw = to_torch(x, requires_grad=True), to_torch(w, requires_grad=True)
    y = F.linear(tx, tw, to_torch(b))
    y.backward(to_torch(dout))
    want = y.detach().numpy()
    np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(want))
    dw = np.zeros_like(w)
    vl.accumulate_rows(dout.reshape(-1), 1, 7, x, dw, 0, 7)
    np.testing.assert_array_equal(np.isnan(dw), np.isnan(tw.grad.numpy()))
    np.testing.assert_array_equal(np.isinf(dw), np.isinf(tw.grad.numpy()))


@pytest.mark.parametrize("dtype", DTYPES)
def test_which_calls_take_the_kernels(dtype):
    """The rule in vector_linear.applies: a CPU with AVX-512 and a block of input features."""
    wide = simd.has_wide_vectors()
    B = vl.row_block(dtype)
    assert vl.applies(B, dtype) == wide
    assert vl.applies(784, dtype) == wide
    assert not vl.applies(B - 1, dtype)
    assert not vl.applies(784, np.float16)
    # conv.py's rule for im2col layers, by output pixels
    assert conv.uses_vector_products(conv.MIN_VECTOR_PIXELS, dtype) == wide
    assert not conv.uses_vector_products(conv.MIN_VECTOR_PIXELS - 1, dtype)


@pytest.mark.parametrize("dtype,shape", CASES, ids=IDS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("threads", ["serial", "parallel"])
def test_linear_ops_through_kernels_match_torch(dtype, shape, bias, threads, monkeypatch):
    """linear_forward / linear_backward (dx, dW, db) on these kernels, on the calling thread
    and split across threads, against torch."""
    x, w, b, dout = _arrays(shape, dtype)
    if not vl.applies(x.shape[1], dtype):
        pytest.skip("this CPU has no AVX-512: the layers run OpenBLAS (tested elsewhere)")
    from scratchnet.backends.numba_backend import linear
    if threads == "parallel":
        monkeypatch.setattr(linear, "PARALLEL_MIN_MACS", 0)
        monkeypatch.setattr(linear, "_MIN_PER_BLOCK", 1)
    b = b if bias else None
    o = ops("numba")
    out, cache = o.linear_forward(x, w, b)
    dx, dw, db = o.linear_backward(dout, cache)
    tx, tw = to_torch(x, requires_grad=True), to_torch(w, requires_grad=True)
    tb = None if b is None else to_torch(b, requires_grad=True)
    y = F.linear(tx, tw, tb)
    y.backward(to_torch(dout))
    assert_close(out, y, dtype, "out")
    assert_close(dx, tx.grad, dtype, "dx")
    assert_close(dw, tw.grad, dtype, "dw")
    if bias:
        assert_close(db, tb.grad, dtype, "db")
    else:
        assert db is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch_through_kernels(dtype):
    """Zero rows: an empty output and zero weight gradients, as torch."""
    K = vl.row_block(dtype)
    w = np.ones((3, K), dtype=dtype)
    o = ops("numba")
    out, cache = o.linear_forward(np.zeros((0, K), dtype=dtype), w, np.ones(3, dtype=dtype))
    dx, dw, db = o.linear_backward(np.zeros((0, 3), dtype=dtype), cache)
    assert out.shape == (0, 3) and dx.shape == (0, K)
    assert not dw.any() and not db.any()
    with torch.no_grad():
        assert tuple(F.linear(torch.zeros(0, K), torch.ones(3, K)).shape) == out.shape


# (N, C, H, W, F, K, stride, padding, groups): im2col layers of at least
# conv.MIN_VECTOR_PIXELS output pixels, where conv.py runs the forward product, the weight
# gradient and the bias gradient on these kernels
CONV_CASES = [
    (3, 1, 28, 28, 32, 3, 1, 0, 1),   # digitcnn's and mitxcnn's conv1
    (2, 1, 16, 16, 7, 5, 1, 2, 1),    # widecnn's conv1 shape, fewer filters
    (2, 3, 33, 36, 5, 3, 2, 1, 1),    # strided, padded, OH != OW
    (2, 4, 16, 16, 6, 3, 1, 1, 2),    # two groups (the forward stays on OpenBLAS)
    (1, 2, 17, 17, 9, 2, 1, 0, 1),    # OH·OW = 256 exactly
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES,
                         ids=lambda c: "N{}-C{}-{}x{}-F{}-k{}-s{}-p{}-g{}".format(*c))
@pytest.mark.parametrize("bias", [True, False])
def test_conv_layers_through_kernels_match_torch(dtype, case, bias, rng):
    """conv2d, conv2d + ReLU and conv2d + ReLU + max-pool (with a workspace) against torch:
    outputs, dx, dw and db."""
    N, C, H, W, Fo, K, stride, pad, groups = case
    OH = (H + 2 * pad - K) // stride + 1
    OW = (W + 2 * pad - K) // stride + 1
    if not conv.uses_vector_products(OH * OW, dtype):
        pytest.skip("this CPU has no AVX-512: the layers run OpenBLAS (tested elsewhere)")
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((Fo, C // groups, K, K)).astype(dtype)
    b = rng.standard_normal(Fo).astype(dtype) if bias else None
    o = ops("numba")
    conv_args = ((stride, stride), (pad,) * 4, (1, 1), groups)
    pool_args = ((2, 2), (2, 2), (0, 0), (1, 1), False)
    layers = [(o.conv2d_forward, o.conv2d_backward, lambda t: t, (), {}),
              (o.conv2d_relu_forward, o.conv2d_relu_backward, F.relu, (), {"workspace": {}}),
              (o.conv2d_relu_maxpool2d_forward, o.conv2d_relu_maxpool2d_backward,
               lambda t: F.max_pool2d(F.relu(t), 2), pool_args, {"workspace": {}})]
    for forward, backward, after, extra_args, kwargs in layers:
        tx, tw = to_torch(x, requires_grad=True), to_torch(w, requires_grad=True)
        tb = None if b is None else to_torch(b, requires_grad=True)
        ref = after(F.conv2d(tx, tw, tb, stride, pad, 1, groups))
        out, cache = forward(x, w, b, *conv_args, *extra_args, **kwargs)
        assert_close(out, ref, dtype, f"{forward.__name__} out")
        dout = rng.standard_normal(out.shape).astype(dtype)
        ref.backward(to_torch(dout))
        dx, dw, db = backward(dout, cache)
        assert_close(dx, tx.grad, dtype, f"{forward.__name__} dx")
        assert_close(dw, tw.grad, dtype, f"{forward.__name__} dw")
        if bias:
            assert_close(db, tb.grad, dtype, f"{forward.__name__} db")
