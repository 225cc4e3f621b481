"""The tutorial networks: ``build(name)`` returns a fresh, torch-initialised scratchnet model.

Each model has ``input_shape`` (per sample, e.g. ``(1, 28, 28)`` or ``(784,)``) so data can be
shaped for it; ``reference.models.build(name)`` returns the PyTorch twin with the same
state-dict keys.
"""
import numpy as np

from .digitcnn import DigitCNN
from .examplenet import ExampleNet
from .lenet import LeNet
from .multidigit import MultiCNN, MultiMLP
from .sequential_models import mitxcnn, mlp, mlp128
from .widecnn import WideCNN

MODELS = {
    "digitcnn": DigitCNN,
    "lenet": LeNet,
    "mlp": mlp,
    "mlp128": mlp128,
    "mitxcnn": mitxcnn,
    "widecnn": WideCNN,
    "examplenet": ExampleNet,
    "multimlp": MultiMLP,
    "multicnn": MultiCNN,
}

# What each model's last layer returns, which decides the loss that trains it.
OUTPUTS = {"digitcnn": "logits", "lenet": "log_probs", "mlp": "logits", "mlp128": "logits",
           "mitxcnn": "logits", "widecnn": "log_probs", "examplenet": "log_probs",
           "multimlp": "two_logits", "multicnn": "two_logits"}


def names():
    """The model names ``build`` accepts."""
    return list(MODELS)


def build(name, dtype=np.float32):
    """A new model ``name`` (see :func:`names`) with torch's default initialisation, in ``dtype``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")
    model = MODELS[name]()
    model.name = name
    return model.to(dtype)
