"""Single-threaded GEMM callable from nopython code: numpy's bundled OpenBLAS, bound directly.

Why not ``np.dot`` inside ``@njit``? Numba's ``np.dot`` needs SciPy, and OpenBLAS's own thread
pool would fight Numba's ``prange`` workers for the same cores (a 3-5x
loss, docs/performance.md). So we bind the CBLAS ``?gemm`` symbols of the OpenBLAS that numpy ships (ILP64, names
``scipy_cblas_sgemm64_``), pin that library to one thread, and let ``prange`` own parallelism.

``gemm(a, b, c, trans_a, trans_b, alpha, beta)`` computes ``c = alpha·op(a)·op(b) + beta·c``
for 2-D arrays of one dtype (float32 or float64) whose rows are contiguous: C-contiguous
arrays or row-major slices of them such as ``dout[:, o0:o1]`` (the row stride is passed to BLAS
as the leading dimension). Under ``NUMBA_DISABLE_JIT=1``
the same function runs as plain Python with ``np.dot``.
"""
import ctypes
import glob
import os

import numpy as np
from numba import njit, types
from numba.extending import overload

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def _find_openblas():
    libs = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    found = sorted(glob.glob(os.path.join(libs, "libscipy_openblas64_*.so*")))
    return found[0] if found else None


_LIB_PATH = _find_openblas()
HAVE_CBLAS = False
if _LIB_PATH is not None:
    try:
        import llvmlite.binding as llvm

        llvm.load_library_permanently(_LIB_PATH)
        _lib = ctypes.CDLL(_LIB_PATH)
        _lib.scipy_cblas_sgemm64_  # noqa: B018  (raises AttributeError if absent)
        _lib.scipy_cblas_dgemm64_  # noqa: B018
        HAVE_CBLAS = True
    except (OSError, AttributeError):
        HAVE_CBLAS = False


def set_blas_threads(n):
    """Set the bundled OpenBLAS's thread count (1 while Numba's prange owns the cores)."""
    if HAVE_CBLAS and hasattr(_lib, "scipy_openblas_set_num_threads64_"):
        _lib.scipy_openblas_set_num_threads64_(ctypes.c_int(n))


set_blas_threads(1)


def gemm(a, b, c, trans_a, trans_b, alpha, beta):
    """c = alpha·op(a)·op(b) + beta·c; a, b, c C-contiguous 2-D arrays of one float dtype.

    This Python body runs when called from Python (or with the JIT disabled); nopython callers
    get the CBLAS binding registered below with ``overload``.
    """
    opa = a.T if trans_a else a
    opb = b.T if trans_b else b
    if beta == 0:
        # BLAS never reads c when beta is 0, so garbage (even NaN) in an np.empty buffer is fine
        c[...] = alpha * np.dot(opa, opb)
    else:
        c[...] = alpha * np.dot(opa, opb) + beta * c


if HAVE_CBLAS:
    _i32, _i64 = types.int32, types.int64

    def _sig(ft):
        return types.void(_i32, _i32, _i32, _i64, _i64, _i64, ft, types.CPointer(ft), _i64,
                          types.CPointer(ft), _i64, ft, types.CPointer(ft), _i64)

    _sgemm = types.ExternalFunction("scipy_cblas_sgemm64_", _sig(types.float32))
    _dgemm = types.ExternalFunction("scipy_cblas_dgemm64_", _sig(types.float64))

    def _leading_dim(x):
        """Elements between rows (a slice's row stride), at least one row's length."""
        return max(x.strides[0] // x.itemsize, x.shape[1], 1)

    def _make_impl(cblas_gemm, scalar):
        def impl(a, b, c, trans_a, trans_b, alpha, beta):
            m, n = c.shape
            k = a.shape[0] if trans_a else a.shape[1]
            if m == 0 or n == 0:
                return
            ta = np.int32(_TRANS if trans_a else _NO_TRANS)
            tb = np.int32(_TRANS if trans_b else _NO_TRANS)
            cblas_gemm(np.int32(_ROW_MAJOR), ta, tb, m, n, k, scalar(alpha), a.ctypes,
                       _leading_dim(a), b.ctypes, _leading_dim(b), scalar(beta),
                       c.ctypes, _leading_dim(c))
        return impl

    _leading_dim = njit(cache=True)(_leading_dim)
    _impl32 = _make_impl(_sgemm, np.float32)
    _impl64 = _make_impl(_dgemm, np.float64)

    @overload(gemm, jit_options={"cache": True})
    def _gemm_nopython(a, b, c, trans_a, trans_b, alpha, beta):
        if c.dtype == types.float32:
            return _impl32
        if c.dtype == types.float64:
            return _impl64
        return None
