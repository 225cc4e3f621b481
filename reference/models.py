"""The tutorial networks written in PyTorch, as their tutorials write them.

State-dict keys equal scratchnet's (``scratchnet.models``), so weights move both ways.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .multidigit import MultiCNN, MultiMLP


class DigitCNN(nn.Module):
    """(N, 1, 28, 28) -> logits (N, 10); ``conv_layers`` then ``fc_layers``."""

    input_shape = (1, 28, 28)

    def __init__(self):
        super().__init__()
        self.conv_layers = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.fc_layers = nn.Sequential(
            nn.Flatten(), nn.Linear(1600, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.fc_layers(self.conv_layers(x))


class LeNet(nn.Module):
    """(N, 1, 28, 28) -> log-probabilities (N, 10), functional style as in pytorch/examples."""

    input_shape = (1, 28, 28)

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, 5)
        self.conv2 = nn.Conv2d(10, 20, 5)
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return F.log_softmax(self.fc2(x), dim=1)


class WideCNN(nn.Module):
    """(N, 1, 28, 28) -> log-probabilities (N, 10): wide convs, three FC layers, dropout."""

    input_shape = (1, 28, 28)

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 150, 5, padding=2)
        self.conv2 = nn.Conv2d(150, 64, 5, padding=2)
        self.fc1 = nn.Linear(3136, 1024)
        self.fc2 = nn.Linear(1024, 500)
        self.fc3 = nn.Linear(500, 10)
        self.dropout1 = nn.Dropout(0.5)
        self.dropout2 = nn.Dropout(0.5)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = self.dropout1(F.relu(self.fc1(x)))
        x = self.dropout2(F.relu(self.fc2(x)))
        return F.log_softmax(self.fc3(x), dim=1)


class ExampleNet(nn.Module):
    """(N, 1, 28, 28) -> log-probabilities (N, 10): pytorch/examples' mnist ``Net``, verbatim."""

    input_shape = (1, 28, 28)

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        output = F.log_softmax(x, dim=1)
        return output


def mlp():
    model = nn.Sequential(nn.Linear(784, 10), nn.ReLU(), nn.Linear(10, 10))
    model.input_shape = (784,)
    return model


def mlp128():
    model = nn.Sequential(nn.Linear(784, 128), nn.LeakyReLU(), nn.Linear(128, 10))
    model.input_shape = (784,)
    return model


def mitxcnn():
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(1600, 128), nn.Dropout(0.5), nn.Linear(128, 10))
    model.input_shape = (1, 28, 28)
    return model


MODELS = {"digitcnn": DigitCNN, "lenet": LeNet, "mlp": mlp, "mlp128": mlp128,
          "mitxcnn": mitxcnn, "widecnn": WideCNN, "examplenet": ExampleNet,
          "multimlp": MultiMLP, "multicnn": MultiCNN}


def build(name, dtype=torch.float32):
    """A new torch model ``name`` (the same names as ``scratchnet.models.build``)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")
    return MODELS[name]().to(dtype)
