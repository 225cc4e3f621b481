"""``compile_ahead``: the numba backend's head start on compiling; NumPy has nothing to compile."""

__all__ = ["compile_ahead", "finish_compile_ahead"]


def compile_ahead(model, x, optimizer=None, loss=None):
    """Nothing to do: the NumPy backend runs no compiled kernels (see numba_backend/precompile.py)."""


def finish_compile_ahead():
    """Nothing to wait for (see numba_backend/precompile.py)."""
