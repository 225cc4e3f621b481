"""Keep freed memory for reuse: glibc's malloc set up for a training loop.

A training step allocates and frees the same arrays, a few MB each, step after step. By default
glibc hands large freed blocks back to the operating system, by unmapping them or by trimming
the top of the heap. Then the next step's arrays arrive as fresh pages, and the first touch of
each page is a page fault. Whether this happens depends on the order of earlier allocations
(glibc moves its thresholds as it goes), so one model can run at different speeds in different
processes. Fixed thresholds keep such blocks in the process:

- arrays up to MMAP_THRESHOLD come from the heap, not from a mapping of their own;
- the heap keeps up to TRIM_THRESHOLD of free memory at its top.

``import scratchnet`` applies this on Linux with glibc, through ``mallopt``, glibc's public
interface. The setting is process-wide, so torch in the same process runs under it too. Other C
libraries are left alone. ``SCRATCHNET_MALLOC_TUNING=0`` leaves malloc as it is.
"""
import ctypes
import os

from .switches import switched_on

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory", "applied"]

# mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts on 64-bit systems
TRIM_THRESHOLD = 64 << 20

_applied = False


def _glibc():
    """The running C library when it is glibc, else None."""
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):  # not a glibc system
        return None
    if not version or not version.startswith("glibc"):
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def keep_freed_memory():
    """Set glibc's mmap and trim thresholds (see the module docstring). Returns True when they
    are set; False without glibc, or when ``SCRATCHNET_MALLOC_TUNING`` is 0."""
    global _applied
    if not switched_on("SCRATCHNET_MALLOC_TUNING"):
        return False
    libc = _glibc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success
    _applied = (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    return _applied


def applied():
    """True when this process runs with the thresholds set."""
    return _applied
