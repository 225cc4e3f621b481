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
