import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture
def rng():
    """A fresh, seeded numpy Generator for test data."""
    return np.random.default_rng(1234)


@pytest.fixture
def simd_switch():
    """``simd_switch(on)`` turns the vector kernels on or off (as ``SCRATCHNET_SIMD`` does) for
    the rest of the test; the setting before the test comes back after it."""
    from scratchnet.backends.numba_backend import simd
    before = simd.enabled()
    yield simd.set_enabled
    simd.set_enabled(before)
