"""With ``NUMBA_DISABLE_JIT=1`` the numba backend runs as plain Python and must still be right.

Runs a small subset of the parity suite in a subprocess (the flag is read at numba import).
"""
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# small shapes only: without the JIT every kernel loop runs in the interpreter
SUBSET = ["tests/test_models.py", "tests/test_conv.py", "tests/test_pool.py",
          "tests/test_softmax.py", "tests/test_linear.py"]
SELECT = "numba and float64 and not widecnn and not mitxcnn and not examplenet"
# The model tests feed real MNIST digits, whose background makes exact float64 ties in max-pool
# windows; both sides pick the first maximum only while the conv rounds equal columns equally.
# Interpreted, the conv's GEMMs run in numpy's own BLAS, and NumPy 1.x's OpenBLAS rounds some
# equal float64 columns apart, so a tie routes its gradient to another pixel (a valid
# subgradient, not torch's).
if np.lib.NumpyVersion(np.__version__) < "2.0.0":
    SELECT += " and not (test_forward_and_gradients_match_torch and digitcnn)"


def test_numba_backend_without_jit_still_matches_torch():
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *SUBSET,
         "-k", SELECT],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout
