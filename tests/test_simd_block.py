"""The 6 × 4 register block (simd/register_block.py) as a small matrix product, and the switch.

The block's intrinsics are correct on any x86-64 or aarch64 CPU (LLVM splits a 512-bit vector
where registers are narrower); only their speed needs AVX-512, so these tests run everywhere.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from numba import njit

from scratchnet.backends.numba_backend import simd
from scratchnet.backends.numba_backend.simd import register_block as rb


@njit(cache=True)
def _accumulate(S, B, C):
    """C (R, F) += S (R, K) · B (K, F) through the block; F a multiple of columns(dtype)."""
    R, K = S.shape
    F = B.shape[1]
    cols = rb.VECTORS * (64 // B.itemsize)
    rows = np.empty(rb.ROWS, np.int64)
    block = rb.new_block(B)
    for f0 in range(0, F, cols):
        for r0 in range(0, R, rb.ROWS):
            for i in range(rb.ROWS):
                rows[i] = min(r0 + i, R - 1) * K  # a short last block repeats its last row
            for k in range(K):
                rb.multiply_add(block, B, B.ctypes.data, k * F + f0, S.ctypes.data,
                                rows.ctypes.data, k)
            rb.add_rows(block, B, C.ctypes.data, F, f0, r0, min(rb.ROWS, R - r0))


@njit(cache=True)
def _store(S, B, bias, out):
    """out (F, R) = (S · B)ᵀ + bias[:, None] for R <= ROWS rows, written transposed."""
    R, K = S.shape
    F = B.shape[1]
    cols = rb.VECTORS * (64 // B.itemsize)
    rows = np.empty(rb.ROWS, np.int64)
    positions = np.empty(rb.ROWS, np.int64)
    for i in range(rb.ROWS):
        rows[i] = min(i, R - 1) * K
        positions[i] = min(i, R - 1)
    block = rb.new_block(B)
    for f0 in range(0, F, cols):
        for k in range(K):
            rb.multiply_add(block, B, B.ctypes.data, k * F + f0, S.ctypes.data,
                            rows.ctypes.data, k)
        rb.store_transposed(block, B, bias.ctypes.data, f0, out.ctypes.data, R,
                            positions.ctypes.data)


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("R, K, blocks", [(1, 1, 1), (7, 3, 1), (13, 50, 2), (30, 17, 3)])
def test_block_accumulates_a_matrix_product(dtype, tol, R, K, blocks, rng):
    F = blocks * rb.columns(dtype)
    S = rng.standard_normal((R, K)).astype(dtype)
    B = rng.standard_normal((K, F)).astype(dtype)
    C0 = rng.standard_normal((R, F)).astype(dtype)
    C = C0.copy()
    _accumulate(S, B, C)
    want = C0.astype(np.float64) + S.astype(np.float64) @ B.astype(np.float64)
    scale = np.abs(C0).max() + np.abs(S).sum(1).max() * np.abs(B).max()
    assert np.abs(C - want).max() <= tol * scale
    _accumulate(S, B, C)  # the block was zeroed after its flush: a second call adds once more
    want += S.astype(np.float64) @ B.astype(np.float64)
    assert np.abs(C - want).max() <= 2 * tol * scale


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("R", [1, 4, rb.ROWS])
def test_block_stores_transposed_with_bias(dtype, tol, R, rng):
    F = rb.columns(dtype)
    K = 9
    S = rng.standard_normal((R, K)).astype(dtype)
    B = rng.standard_normal((K, F)).astype(dtype)
    bias = rng.standard_normal(F).astype(dtype)
    out = np.full((F, R), np.nan, dtype)
    _store(S, B, bias, out)
    want = (S.astype(np.float64) @ B).T + bias[:, None]
    assert np.abs(out - want).max() <= tol * (np.abs(want).max() + 1)


def test_switch(simd_switch):
    simd_switch(False)
    assert not simd.enabled() and not simd.wide_enabled()
    simd_switch(True)
    assert simd.enabled()
    assert simd.wide_enabled() == simd.has_wide_vectors()


@pytest.mark.parametrize("value, on", [("0", False), ("off", False), ("1", True), (None, True)])
def test_switch_reads_the_environment_at_import(value, on):
    env = {k: v for k, v in os.environ.items() if k != "SCRATCHNET_SIMD"}
    if value is not None:
        env["SCRATCHNET_SIMD"] = value
    code = "from scratchnet.backends.numba_backend import simd; print(simd.enabled())"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert run.stdout.split() == [str(on)]
