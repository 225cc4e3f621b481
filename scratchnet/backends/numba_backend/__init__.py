"""Numba kernels with the same names and signatures as numpy_backend: the fast default."""
from .activation import *  # noqa: F401,F403
from .conv import *  # noqa: F401,F403
from .dropout import *  # noqa: F401,F403
from .fused import *  # noqa: F401,F403
from .linear import *  # noqa: F401,F403
from .loss import *  # noqa: F401,F403
from .pool import *  # noqa: F401,F403
from .precompile import *  # noqa: F401,F403
from .softmax import *  # noqa: F401,F403
