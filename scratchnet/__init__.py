"""scratchnet: a CNN training stack in NumPy + Numba, proven op by op against PyTorch."""
from . import allocator, backend, nn, optim  # noqa: F401
from .backend import get_backend, set_backend, use_backend  # noqa: F401
from .nn.functional import add, flatten  # noqa: F401
from .random import manual_seed  # noqa: F401

__version__ = "0.1.0"

# a training loop reuses the memory it frees (allocator.py)
allocator.keep_freed_memory()


def __getattr__(name):
    # models and data import the whole nn stack and the MNIST files; load them on first use
    if name in ("models", "data"):
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    if name in ("Run", "train"):  # the run layer (scratchnet.run), loaded on first use too
        from . import run
        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
