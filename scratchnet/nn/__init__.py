"""Layers and losses with torch.nn's names, arguments and semantics."""
from .activation import *  # noqa: F401,F403
from .container import ModuleList, Sequential  # noqa: F401
from .conv import *  # noqa: F401,F403
from .dropout import *  # noqa: F401,F403
from .flatten import *  # noqa: F401,F403
from .linear import *  # noqa: F401,F403
from .loss import *  # noqa: F401,F403
from .module import Module  # noqa: F401
from .parameter import Parameter  # noqa: F401
from .pooling import *  # noqa: F401,F403
from .softmax import *  # noqa: F401,F403
from . import functional, fusion, init, tape  # noqa: F401
