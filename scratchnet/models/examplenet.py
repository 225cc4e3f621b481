"""``examplenet``: the ``Net`` of pytorch/examples' ``mnist/main.py`` (its ``mnist_cnn.pt``)."""
import scratchnet as sn
import scratchnet.nn.functional as F

from .. import nn


class ExampleNet(nn.Module):
    """(N, 1, 28, 28) -> log-probabilities (N, 10), line for line as the example writes it.

    conv1 Conv2d(1,32,3,1) -> relu -> conv2 Conv2d(32,64,3,1) -> relu -> max_pool2d(2)
    -> dropout1 Dropout(0.25) -> flatten (9216) -> fc1 Linear(9216,128) -> relu
    -> dropout2 Dropout(0.5) -> fc2 Linear(128,10) -> log_softmax(dim=1)
    """

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
        x = sn.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        output = F.log_softmax(x, dim=1)
        return output
