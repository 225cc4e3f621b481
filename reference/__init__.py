"""PyTorch twins of scratchnet's models, and conversion of weights and optimizer state.

Needs torch (``pip install -e ".[test]"``); scratchnet itself does not.
"""
from . import convert, models  # noqa: F401
