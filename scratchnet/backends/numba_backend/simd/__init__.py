"""Hand-written vector kernels, and the one switch that turns them off.

The portable kernels of this backend are plain Numba loops and BLAS calls. For a few layer
shapes, kernels that emit LLVM vector instructions themselves run the same arithmetic faster
(docs/performance.md has the measurements); they live here, each behind one selection function
that the op's module calls. ``SCRATCHNET_SIMD=0`` in the environment forces the portable
kernels everywhere, as does ``set_enabled(False)``.

Only public APIs build them: ``numba.extending.intrinsic`` and llvmlite's IR builder, with
arrays passed by address (``a.ctypes.data``), the pattern of Numba's own ``@intrinsic``
documentation.
"""
import numba

from ....switches import switched_on
from .vectors import has_wide_vectors

__all__ = ["enabled", "set_enabled", "wide_enabled"]


# read once: the selection functions ask on every op call, and an environment lookup each
# time is a measurable share of a small model's step
_enabled = not numba.config.DISABLE_JIT and switched_on("SCRATCHNET_SIMD")


def enabled():
    """True unless ``SCRATCHNET_SIMD=0`` at import or ``set_enabled(False)`` since (or the JIT
    is off: intrinsics need compiled code)."""
    return _enabled


def set_enabled(flag):
    """Turn the vector kernels on or off for the ops called from now on."""
    global _enabled
    _enabled = bool(flag) and not numba.config.DISABLE_JIT


def wide_enabled():
    """``enabled()`` on a CPU with AVX-512 (the 512-bit kernels need its 32 vector registers)."""
    return _enabled and has_wide_vectors()
