"""``lenet``: the LeNet-style network of PyTorch's MNIST example (``conv1``/``conv2``/``fc1``/``fc2``)."""
import scratchnet as sn
import scratchnet.nn.functional as F

from .. import nn


class LeNet(nn.Module):
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

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = sn.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return F.log_softmax(self.fc2(x), dim=1)
