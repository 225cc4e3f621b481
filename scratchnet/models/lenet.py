"""``lenet``: the LeNet-style network of PyTorch's MNIST example (``conv1``/``conv2``/``fc1``/``fc2``)."""
from .. import nn
from .chain import Chain


class LeNet(Chain):
    """(N, 1, 28, 28) -> log-probabilities (N, 10).

    conv1 Conv2d(1,10,5) -> max_pool2d(2) -> relu -> conv2 Conv2d(10,20,5) -> max_pool2d(2) -> relu
    -> flatten (320) -> fc1 Linear(320,50) -> relu -> fc2 Linear(50,10) -> log_softmax(dim=1)
    """

    input_shape = (1, 28, 28)

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, 5)
        self.conv2 = nn.Conv2d(10, 20, 5)
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)
        self.steps = [
            self.conv1, nn.MaxPool2d(2), nn.ReLU(),
            self.conv2, nn.MaxPool2d(2), nn.ReLU(),
            nn.Flatten(), self.fc1, nn.ReLU(), self.fc2, nn.LogSoftmax(dim=1)]
