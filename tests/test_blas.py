"""The nopython GEMM binding against numpy's matmul, for every transpose and dtype."""
import numpy as np
import pytest
from numba import njit

from scratchnet.backends.numba_backend.blas import gemm


@njit(cache=True)
def _gemm_from_nopython(a, b, c, trans_a, trans_b, alpha, beta):
    gemm(a, b, c, trans_a, trans_b, alpha, beta)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("m,n,k", [(5, 3, 7), (1, 1, 1), (4, 6, 0), (0, 3, 2)])
def test_gemm_matches_numpy(rng, dtype, trans_a, trans_b, m, n, k):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    c = rng.standard_normal((m, n)).astype(dtype)
    expected = 0.5 * ((a.T if trans_a else a) @ (b.T if trans_b else b)) + 2.0 * c
    for fn in (gemm, _gemm_from_nopython):
        out = c.copy()
        fn(a, b, out, trans_a, trans_b, 0.5, 2.0)
        np.testing.assert_allclose(out, expected, rtol=1e-5 if dtype == np.float32 else 1e-12,
                                   atol=1e-5 if dtype == np.float32 else 1e-12)


@njit(cache=True)
def _gemm_on_column_blocks(a, b, c, trans_a, trans_b, alpha, beta):
    # row-major slices that are not C-contiguous: the row stride is the leading dimension
    gemm(a[:, 1:-1], b[:, 2:], c[:, 1:3], trans_a, trans_b, alpha, beta)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_on_strided_row_slices(rng, dtype, trans_a, trans_b):
    """Column slices such as ``dout[:, o0:o1]`` (linear.py's per-feature weight gradient)."""
    m, n, k = 4, 2, 3
    a = rng.standard_normal(((k, m + 2) if trans_a else (m, k + 2))).astype(dtype)
    b = rng.standard_normal(((n, k + 2) if trans_b else (k, n + 2))).astype(dtype)
    c = rng.standard_normal((m, 5)).astype(dtype)
    a_blk, b_blk = a[:, 1:-1], b[:, 2:]
    expected = c.copy()
    expected[:, 1:3] = (0.5 * ((a_blk.T if trans_a else a_blk) @ (b_blk.T if trans_b else b_blk))
                        + 2.0 * c[:, 1:3])
    out = c.copy()
    _gemm_on_column_blocks(a, b, out, trans_a, trans_b, 0.5, 2.0)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)
