"""The library's one source of randomness: a seeded ``numpy.random.Generator``.

Weight initialisation and dropout masks draw from it, so ``manual_seed(s)`` makes a run
repeatable, as ``torch.manual_seed`` does for PyTorch.
"""
import numpy as np

_generator = np.random.default_rng(0)


def manual_seed(seed):
    """Reset the global generator to ``seed`` and return it."""
    global _generator
    _generator = np.random.default_rng(seed)
    return _generator


def default_generator():
    """The global ``numpy.random.Generator`` used by initialisers and dropout."""
    return _generator


def get_rng_state():
    """The global generator's state as a JSON-friendly dict (for checkpoints)."""
    return _generator.bit_generator.state


def set_rng_state(state):
    """Restore a state returned by :func:`get_rng_state`."""
    _generator.bit_generator.state = state
