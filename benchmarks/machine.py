"""Machine facts, thread pools, and the float32 GEMM peak every GFLOP/s figure is compared with.

Three thread pools are in play: Numba's (``prange``), BLAS (numpy's, and SciPy's, which the
numba backend's kernels call through ``np.dot`` from inside ``prange``) and torch's (OpenMP +
MKL). Both sides get the same number of threads. BLAS is held to one thread while Numba's pool
runs, because two busy-waiting pools on the same cores cost several times over, and given all
threads while plain NumPy code runs, which has no other pool.
"""
import os
import platform
import sys
import time

import numpy as np


def available_cores():
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


SIMD_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "amx_tile")


def _cpuinfo_field(name):
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == name:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model():
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    return _cpuinfo_field("model name") or platform.processor() or "unknown"


def simd_flags():
    """The vector-instruction flags that bound GEMM speed (from /proc/cpuinfo), e.g. avx512f."""
    flags = (_cpuinfo_field("flags") or "").split()
    return [f for f in SIMD_FLAGS if f in flags]


def set_blas_threads(n):
    """Set numpy's BLAS to ``n`` threads (threadpoolctl); False when it cannot be set."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return False
    threadpool_limits(limits=n, user_api="blas")
    return True


def set_threads(n):
    """Give Numba and torch ``n`` threads each and hold BLAS to 1; returns what was set."""
    import numba
    import torch

    numba_max = numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(min(n, numba_max))
    torch.set_num_threads(n)
    blas_ok = set_blas_threads(1)
    return {
        "requested": n,
        "numba": numba.get_num_threads(),
        "numba_max": numba_max,
        "torch_intra_op": torch.get_num_threads(),
        "torch_interop": torch.get_num_interop_threads(),
        "openblas_while_numba_runs": 1 if blas_ok else "not settable",
        "openblas_while_numpy_runs": n if blas_ok else "not settable",
    }


def gemm_peak(threads, size=2048, reps=5):
    """Best float32 GFLOP/s of numpy's ``a @ b`` on ``size``² matrices, ``threads`` BLAS threads.

    The achievable ceiling that training GFLOP/s is reported against; 2·size³ FLOPs per product.
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    c = np.empty_like(a)
    set_blas_threads(threads)
    try:
        np.matmul(a, b, out=c)  # wakes the pool and faults in c
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            np.matmul(a, b, out=c)
            best = min(best, time.perf_counter() - t0)
    finally:
        set_blas_threads(1)
    return {"size": size, "threads": threads, "reps": reps, "gflops": 2 * size ** 3 / best / 1e9}


def load_average():
    """1-minute load average (None where the OS has none): other work competing for the cores."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def facts(thread_info):
    """CPU, core count, library versions and the thread settings in force, as a dict."""
    import numba
    import torch

    try:
        threading_layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        threading_layer = f"not yet chosen (config: {numba.config.THREADING_LAYER})"
    cuda = torch.cuda.is_available()
    return {
        "cpu": cpu_model(),
        "cpu_simd": simd_flags(),
        "cores_available": available_cores(),
        "cores_total": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "numba": numba.__version__,
        "torch": torch.__version__,
        "numba_threading_layer": threading_layer,
        "threads": thread_info,
        "load_average_1min_at_end": load_average(),
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                               "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
                                               "NUMBA_CACHE_DIR", "NUMBA_DISABLE_JIT")},
    }
