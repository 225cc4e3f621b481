"""One switch that chooses which implementation of every op the layers call.

``numpy``: readable forward/backward pairs, the specification and the test oracle.
``numba``: compiled kernels with the same names and signatures, the fast default.

Chosen by ``SCRATCHNET_BACKEND`` at import time, or by :func:`set_backend` / :func:`use_backend`
at run time. Layers call ``backend.ops().conv2d_forward(...)`` and never branch on the backend.
"""
import contextlib
import importlib
import os

BACKENDS = ("numba", "numpy")
_MODULES = {
    "numpy": "scratchnet.backends.numpy_backend",
    "numba": "scratchnet.backends.numba_backend",
}
_current = None


def set_backend(name):
    """Select the op implementation used by every layer from now on."""
    global _current
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: expected one of {', '.join(BACKENDS)}")
    _current = name


def get_backend():
    """The name of the selected backend (``'numba'`` or ``'numpy'``)."""
    if _current is None:
        set_backend(os.environ.get("SCRATCHNET_BACKEND", "numba"))
    return _current


_loaded = {}


def ops(name=None):
    """The module of ops for backend ``name`` (default: the selected one)."""
    name = name or _current or get_backend()
    module = _loaded.get(name)
    if module is None:
        # imported on first use: the numba backend compiles (or loads) kernels when imported
        module = _loaded[name] = importlib.import_module(_MODULES[name])
    return module


@contextlib.contextmanager
def use_backend(name):
    """Temporarily select a backend: ``with use_backend("numpy"): ...``."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)
