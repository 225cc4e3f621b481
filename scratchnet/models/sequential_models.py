"""The tutorials whose networks are plain ``nn.Sequential`` (state-dict keys ``0.weight``, ...)."""
from .. import nn


def mlp():
    """Linear(784,10)-ReLU-Linear(10,10) on flattened (N, 784) input -> logits (N, 10)."""
    model = nn.Sequential(nn.Linear(784, 10), nn.ReLU(), nn.Linear(10, 10))
    model.input_shape = (784,)
    return model


def mlp128():
    """Linear(784,128)-LeakyReLU-Linear(128,10) on flattened (N, 784) input -> logits (N, 10)."""
    model = nn.Sequential(nn.Linear(784, 128), nn.LeakyReLU(), nn.Linear(128, 10))
    model.input_shape = (784,)
    return model


def mitxcnn():
    """Conv2d(1,32,3)-ReLU-MaxPool2d(2)-Conv2d(32,64,3)-ReLU-MaxPool2d(2)-Flatten-Linear(1600,128)
    -Dropout(0.5)-Linear(128,10) on (N, 1, 28, 28) -> logits (N, 10)."""
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(1600, 128), nn.Dropout(0.5), nn.Linear(128, 10))
    model.input_shape = (1, 28, 28)
    return model
