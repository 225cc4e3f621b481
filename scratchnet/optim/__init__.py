"""Optimizers with torch.optim's names, arguments, update rules and state-dict layout."""
from . import lr_scheduler  # noqa: F401
from .adadelta import Adadelta
from .adam import Adam, AdamW
from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Adadelta", "lr_scheduler"]
