"""``digitcnn``: the two-block CNN of the "MNIST digit classifier" tutorial (``conv_layers`` / ``fc_layers``)."""
from .. import nn


class DigitCNN(nn.Module):
    """(N, 1, 28, 28) -> logits (N, 10).

    conv_layers: Conv2d(1,32,3)-ReLU-MaxPool2d(2)-Conv2d(32,64,3)-ReLU-MaxPool2d(2)  -> (N, 64, 5, 5)
    fc_layers:   Flatten-Linear(1600,64)-ReLU-Linear(64,10)
    """

    input_shape = (1, 28, 28)

    def __init__(self):
        super().__init__()
        self.conv_layers = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.fc_layers = nn.Sequential(
            nn.Flatten(), nn.Linear(1600, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        x = self.conv_layers(x)
        x = self.fc_layers(x)
        return x
