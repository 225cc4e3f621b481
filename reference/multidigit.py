"""The two-digit networks in PyTorch, as the MITx 6.86x tutorial writes them.

Each returns ``(out[:, :10], out[:, 10:])``, the first and the second digit's logits; the
state-dict keys equal ``scratchnet.models.multidigit``'s.
"""
import torch.nn.functional as F
from torch import nn


class MultiMLP(nn.Module):
    """(N, 1, 42, 28) -> ((N, 10), (N, 10)): flatten-linear1(1176, 64)-linear2(64, 20)."""

    input_shape = (1, 42, 28)

    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear1 = nn.Linear(42 * 28, 64)
        self.linear2 = nn.Linear(64, 20)

    def forward(self, x):
        out = self.linear2(self.linear1(self.flatten(x)))
        return out[:, :10], out[:, 10:]


class MultiCNN(nn.Module):
    """(N, 1, 42, 28) -> ((N, 10), (N, 10)): two conv blocks, Linear(2048,128), Linear(128,20)."""

    input_shape = (1, 42, 28)

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(1, 32, 4), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, 4), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Flatten(), nn.Linear(2048, 128), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(128, 20))

    def forward(self, x):
        out = self.layers(x)
        return out[:, :10], out[:, 10:]


def two_digit_loss(outputs, target):
    """The tutorial's joint loss: the mean of the two heads' cross-entropies; target (2, N)."""
    first, second = outputs
    return 0.5 * (F.cross_entropy(first, target[0]) + F.cross_entropy(second, target[1]))


MODELS = {"multimlp": MultiMLP, "multicnn": MultiCNN}
