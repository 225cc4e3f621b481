"""The linear layer against torch whatever its split across threads, and its zero-skipping
forward pass (simd/sparse_linear.py) against torch and the portable path."""
import numpy as np
import pytest
import torch

from scratchnet.backends.numba_backend import common, linear
from scratchnet.backends.numba_backend.simd import sparse_linear
from tests.helpers import DTYPES, assert_close, to_torch

# (rows, input features, output features): features not a multiple of a vector or of a block,
# one row, one output, a narrow head, more outputs than a thread's share
SHAPES = [(32, 784, 10), (1, 64, 1), (5, 100, 10), (7, 33, 128), (13, 129, 1024), (3, 200, 17),
          (70, 65, 6), (1, 64, 17), (33, 784, 128), (9, 100, 40), (100, 70, 30)]


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
def test_linear_matches_torch(threads, rng, dtype, shape, bias):
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


def _mostly_zeros(rng, shape, dtype, density=0.15):
    x = rng.random(shape)
    return np.where(rng.random(shape) < density, x, 0).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(256, 784, 128), (300, 100, 70), (257, 33, 64), (260, 9, 200)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("bias", [True, False])
def test_zero_skipping_forward_matches_torch(threads, monkeypatch, rng, dtype, shape, bias):
    N, K, O = shape
    monkeypatch.setenv("SCRATCHNET_SIMD", "1")
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
def test_zero_skipping_keeps_nonfinite_products(monkeypatch, rng, dtype):
    """0·inf is NaN in torch: a non-finite weight sends the product to the GEMM; an input
    NaN or inf is nonzero and taken."""
    monkeypatch.setenv("SCRATCHNET_SIMD", "1")
    x = _mostly_zeros(rng, (300, 100), dtype)
    x[7, 4] = np.nan
    x[8, 4] = np.inf
    finite_w = rng.standard_normal((70, 100)).astype(dtype)
    # the threads transpose w by input features: a bad weight in either half is seen
    for bad, column in ((None, 0), (np.inf, 9), (np.nan, 9), (np.inf, 90)):
        w = finite_w.copy()
        if bad is not None:
            w[5, column] = bad
        out, _ = linear.linear_forward(x, w, None)
        expected = torch.nn.functional.linear(to_torch(x), to_torch(w)).numpy()
        np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
        finite = np.isfinite(expected)
        assert_close(out[finite], expected[finite], dtype, "finite entries")


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_skipping_selection(monkeypatch, rng, dtype):
    """Taken for a mostly-zero input of enough rows and outputs; not for a dense input, a
    training batch, a narrow layer, nor under SCRATCHNET_SIMD=0."""
    monkeypatch.setenv("SCRATCHNET_SIMD", "1")
    N, O = sparse_linear.SKIP_MIN_ROWS, sparse_linear.skip_block(dtype)
    x = _mostly_zeros(rng, (N, 50), dtype)
    w = np.zeros((O, 50), dtype)
    assert sparse_linear.applies(x, w)
    assert not sparse_linear.applies(rng.random((N, 50)).astype(dtype), w)
    assert not sparse_linear.applies(x[:N - 1], w)
    assert not sparse_linear.applies(x, w[:O - 1])
    monkeypatch.setenv("SCRATCHNET_SIMD", "0")
    assert not sparse_linear.applies(x, w)
