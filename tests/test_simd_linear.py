"""The linear layer's vector kernels (simd/linear.py, simd/sparse_linear.py) against the portable
path and torch, whatever the split across threads."""
import numpy as np
import pytest
import torch

from scratchnet.backends.numba_backend import activation, common, fused, linear
from scratchnet.backends.numba_backend.simd import linear as simd_linear
from scratchnet.backends.numba_backend.simd import sparse_linear
from scratchnet.backends.numba_backend.simd.vectors import has_wide_vectors
from tests.helpers import DTYPES, assert_close, to_torch

NEEDS_AVX512 = pytest.mark.skipif(not has_wide_vectors(),
                                  reason="the vector path runs only on a CPU with AVX-512")

# (rows, input features, output features): features not a multiple of a vector or of a block,
# one row, one output, a narrow head, more outputs than a thread's share
SHAPES = [(32, 784, 10), (1, 64, 1), (5, 100, 10), (7, 33, 128), (13, 129, 1024), (3, 200, 17),
          (70, 65, 6), (1, 64, 17), (33, 784, 128), (9, 100, 40), (100, 70, 30)]


@pytest.fixture(params=["vector", "portable"])
def path(request, simd_switch):
    """The vector kernels (skipped without AVX-512) or the portable ones (SCRATCHNET_SIMD=0)."""
    if request.param == "vector":
        if not has_wide_vectors():
            pytest.skip("the vector path runs only on a CPU with AVX-512")
        simd_switch(True)
    else:
        simd_switch(False)
    return request.param


@pytest.fixture(params=["serial", "parallel"])
def threads(request, monkeypatch):
    """Each product on the calling thread, or split across threads whatever its size."""
    if request.param == "parallel":
        monkeypatch.setattr(common, "PARALLEL_MIN_WORK", 0)
    return request.param


def _torch_linear(x, w, b, dout):
    tx, tw = to_torch(x, True), to_torch(w, True)
    tb = to_torch(b, True) if b is not None else None
    out = torch.nn.functional.linear(tx, tw, tb)
    out.backward(to_torch(dout))
    return (out.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(),
            tb.grad.numpy() if b is not None else None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(path, threads, rng, dtype, shape, bias):
    N, K, O = shape
    x = rng.standard_normal((N, K)).astype(dtype)
    w = rng.standard_normal((O, K)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype) if bias else None
    dout = rng.standard_normal((N, O)).astype(dtype)
    out, cache = linear.linear_forward(x, w, b)
    dx, dw, db = linear.linear_backward(dout, cache)
    t_out, t_dx, t_dw, t_db = _torch_linear(x, w, b, dout)
    assert_close(out, t_out, dtype, "out")
    assert_close(dx, t_dx, dtype, "dx")
    assert_close(dw, t_dw, dtype, "dw")
    if bias:
        assert_close(db, t_db, dtype, "db")
    else:
        assert db is None
    no_dx, dw_alone, db_alone = linear.linear_backward(dout, cache, input_grad=False)
    assert no_dx is None
    np.testing.assert_array_equal(dw_alone, dw)
    if bias:
        np.testing.assert_array_equal(db_alone, db)


@NEEDS_AVX512
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_vector_matches_portable(simd_switch, rng, dtype, shape):
    N, K, O = shape
    x = rng.standard_normal((N, K)).astype(dtype)
    w = rng.standard_normal((O, K)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype)
    dout = rng.standard_normal((N, O)).astype(dtype)
    results = {}
    for vector in (True, False):
        simd_switch(vector)
        out, cache = linear.linear_forward(x, w, b)
        results[vector] = (out,) + linear.linear_backward(dout, cache)
    for name, vector, portable in zip(("out", "dx", "dw", "db"), results[True], results[False]):
        assert_close(vector, portable, dtype, name)


@NEEDS_AVX512
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_matches_numpy(rng, dtype, shape):
    """The kernel alone, whatever the selection: narrow heads and single rows included."""
    N, K, O = shape
    K = max(K, simd_linear.row_block(dtype))
    x = rng.standard_normal((N, K)).astype(dtype)
    w = rng.standard_normal((O, K)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype)
    out = np.empty((N, O), dtype)
    simd_linear.forward_rows(x, w, b, out, 0, N, 0, O, False)
    assert_close(out, x.astype(np.float64) @ w.T + b, dtype, "out")


@NEEDS_AVX512
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_fills_only_its_block(rng, dtype):
    """forward_rows writes its rows and features, nothing around them."""
    K = simd_linear.row_block(dtype) + 3
    x = rng.standard_normal((9, K)).astype(dtype)
    w = rng.standard_normal((20, K)).astype(dtype)
    b = rng.standard_normal(20).astype(dtype)
    out = np.full((9, 20), np.nan, dtype)
    simd_linear.forward_rows(x, w, b, out, 2, 7, 3, 17, False)
    expected = x[2:7] @ w[3:17].T + b[3:17]
    assert_close(out[2:7, 3:17], expected, dtype, "block")
    inside = np.zeros(out.shape, bool)
    inside[2:7, 3:17] = True
    assert np.isnan(out[~inside]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_selection(simd_switch, dtype):
    """The vector path where AVX-512 is there and the input features fill a block, whatever
    the rows and outputs (a narrow head, an inference batch); the portable path under
    SCRATCHNET_SIMD=0, for fewer features, other dtypes or mixed ones."""
    block = simd_linear.row_block(dtype)
    x = np.zeros((4, block), dtype)
    w = np.zeros((3, block), dtype)
    other = np.float32 if dtype == np.float64 else np.float64
    simd_switch(False)
    assert not simd_linear.applies(x, w)
    simd_switch(True)
    assert simd_linear.applies(x, w) == has_wide_vectors()
    assert simd_linear.applies(np.zeros((1000, block), dtype), w) == has_wide_vectors()
    assert not simd_linear.applies(x[:, :block - 1], w[:, :block - 1])
    assert not simd_linear.applies(x.astype(np.int64), w.astype(np.int64))
    assert not simd_linear.applies(x, w.astype(other))


@NEEDS_AVX512
@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_takes_vector_path(threads, simd_switch, rng, dtype):
    """Where applies() holds, the layer's output is the kernel's own, bit for bit (its entries
    do not depend on how the threads split the work)."""
    simd_switch(True)
    N, K, O = 40, simd_linear.row_block(dtype) * 2 + 5, 48
    x = rng.standard_normal((N, K)).astype(dtype)
    w = rng.standard_normal((O, K)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype)
    out, _ = linear.linear_forward(x, w, b)
    expected = np.empty_like(out)
    simd_linear.forward_rows(x, w, b, expected, 0, N, 0, O, False)
    np.testing.assert_array_equal(out, expected)


@NEEDS_AVX512
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gradient_kernel_matches_numpy(rng, dtype, shape):
    """accumulate_rows alone as dw = doutᵀ·x and dx = dout·w: narrow heads, single rows and
    columns past the last whole block included."""
    N, K, O = shape
    K = max(K, simd_linear.row_block(dtype))
    x = rng.standard_normal((N, K)).astype(dtype)
    w = rng.standard_normal((O, K)).astype(dtype)
    dout = rng.standard_normal((N, O)).astype(dtype)
    dw = np.full((O, K), np.nan, dtype)
    dx = np.full((N, K), np.nan, dtype)
    simd_linear.accumulate_rows(dout, 1, O, x, dw, 0, O)
    simd_linear.accumulate_rows(dout, O, 1, w, dx, 0, N)
    d64 = dout.astype(np.float64)
    assert_close(dw, d64.T @ x, dtype, "dw")
    assert_close(dx, d64 @ w, dtype, "dx")


@NEEDS_AVX512
@pytest.mark.parametrize("dtype", DTYPES)
def test_gradient_kernel_fills_only_its_rows(rng, dtype):
    """accumulate_rows overwrites rows [r0, r1) of c, whatever they held, and nothing else."""
    K = simd_linear.row_block(dtype) + 7
    x = rng.standard_normal((5, K)).astype(dtype)
    dout = rng.standard_normal((5, 20)).astype(dtype)
    dw = np.full((20, K), np.nan, dtype)
    simd_linear.accumulate_rows(dout, 1, 20, x, dw, 3, 16)
    assert_close(dw[3:16], dout[:, 3:16].T.astype(np.float64) @ x, dtype, "rows")
    assert np.isnan(dw[:3]).all() and np.isnan(dw[16:]).all()


@NEEDS_AVX512
@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_takes_gradient_vector_path(threads, simd_switch, rng, dtype):
    """Where the forward pass took the vector kernel, the layer's dw and dx are the gradient
    kernel's own, bit for bit
    (each row's sums do not depend on how the threads split the rows)."""
    simd_switch(True)
    N, K, O = 40, simd_linear.row_block(dtype) * 2 + 5, 48
    x = rng.standard_normal((N, K)).astype(dtype)
    w = rng.standard_normal((O, K)).astype(dtype)
    dout = rng.standard_normal((N, O)).astype(dtype)
    _, cache = linear.linear_forward(x, w, None)
    dx, dw, _ = linear.linear_backward(dout, cache)
    expected_dw, expected_dx = np.empty_like(dw), np.empty_like(dx)
    simd_linear.accumulate_rows(dout, 1, O, x, expected_dw, 0, O)
    simd_linear.accumulate_rows(dout, O, 1, w, expected_dx, 0, N)
    np.testing.assert_array_equal(dw, expected_dw)
    np.testing.assert_array_equal(dx, expected_dx)


def _mostly_zeros(rng, shape, dtype, density=0.15):
    x = rng.random(shape)
    return np.where(rng.random(shape) < density, x, 0).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape",
                         [(256, 784, 128), (300, 100, 134), (257, 33, 128), (260, 9, 200)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("bias", [True, False])
def test_zero_skipping_forward_matches_torch(threads, simd_switch, rng, dtype, shape, bias):
    N, K, O = shape
    simd_switch(True)
    x = _mostly_zeros(rng, (N, K), dtype)
    x[3, :] = 0  # a row of zeros only: the bias alone
    w = rng.standard_normal((O, K)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype) if bias else None
    assert sparse_linear.applies(x, w)
    out, _ = linear.linear_forward(x, w, b)
    expected = torch.nn.functional.linear(to_torch(x), to_torch(w),
                                          to_torch(b) if bias else None).numpy()
    assert_close(out, expected, dtype, "out")


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_skipping_keeps_nonfinite_products(simd_switch, rng, dtype):
    """0·inf is NaN in torch: a non-finite weight sends the product to the GEMM; an input
    NaN or inf is nonzero and taken."""
    simd_switch(True)
    x = _mostly_zeros(rng, (300, 100), dtype)
    x[7, 4] = np.nan
    x[8, 4] = np.inf
    finite_w = rng.standard_normal((140, 100)).astype(dtype)
    # the threads transpose w by input features in vector tiles, the edges one value at a
    # time: a bad weight in either half, in a tile or on an edge, is seen
    for bad, row, column in ((None, 0, 0), (np.inf, 5, 9), (np.nan, 5, 9), (np.inf, 5, 90),
                             (np.nan, 5, 99), (-np.inf, 139, 20), (np.nan, 139, 70)):
        w = finite_w.copy()
        if bad is not None:
            w[row, column] = bad
        out, _ = linear.linear_forward(x, w, None)
        expected = torch.nn.functional.linear(to_torch(x), to_torch(w)).numpy()
        np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
        finite = np.isfinite(expected)
        assert_close(out[finite], expected[finite], dtype, "finite entries")


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_skipping_selection(simd_switch, rng, dtype):
    """Taken for a mostly-zero input of enough rows and outputs; not for a dense input, a
    training batch, a narrow layer, nor under SCRATCHNET_SIMD=0."""
    simd_switch(True)
    N, O = sparse_linear.SKIP_MIN_ROWS, sparse_linear.skip_block(dtype)
    x = _mostly_zeros(rng, (N, 50), dtype)
    w = np.zeros((O, 50), dtype)
    assert sparse_linear.applies(x, w)
    assert not sparse_linear.applies(rng.random((N, 50)).astype(dtype), w)
    assert not sparse_linear.applies(x[:N - 1], w)
    assert not sparse_linear.applies(x, w[:O - 1])
    simd_switch(False)
    assert not sparse_linear.applies(x, w)


def _bits(a):
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(32, 784, 10), (5, 20, 7), (33, 784, 128), (300, 100, 134)],
                         ids=lambda s: "x".join(map(str, s)))
def test_fused_relu_equals_relu_after_linear(path, threads, rng, dtype, shape):
    """linear_relu_forward applies its ReLU inside the linear kernels (or after the zero-skipping
    product, the last shape): bit for bit relu_forward(linear_forward), NaN and signed zeros
    included, and the same gradients through its cache."""
    N, K, O = shape
    x = _mostly_zeros(rng, (N, K), dtype)
    x[1, 3] = np.nan
    w = rng.standard_normal((O, K)).astype(dtype)
    w[2] = -0.0  # with a -0.0 bias: an output of signed zeros
    b = rng.standard_normal(O).astype(dtype)
    b[2] = -0.0
    out, cache = fused.linear_relu_forward(x, w, b)
    y, linear_cache = linear.linear_forward(x, w, b)
    expected, relu_cache = activation.relu_forward(y)
    assert (_bits(out) == _bits(expected)).all()
    assert np.isnan(out[1]).all() and (out >= 0).sum() == out.size - O
    dout = rng.standard_normal((N, O)).astype(dtype)
    want = linear.linear_backward(activation.relu_backward(dout, relu_cache), linear_cache)
    for got, expected in zip(fused.linear_relu_backward(dout, cache), want):
        assert (_bits(got) == _bits(expected)).all()
