"""``widecnn``: the wide two-conv network with three fully connected layers and dropout."""
import scratchnet as sn
import scratchnet.nn.functional as F

from .. import nn


class WideCNN(nn.Module):
    """(N, 1, 28, 28) -> log-probabilities (N, 10).

    conv1 Conv2d(1,150,5,padding=2) -> relu -> max_pool2d(2) -> conv2 Conv2d(150,64,5,padding=2)
    -> relu -> max_pool2d(2) -> flatten (3136) -> fc1 Linear(3136,1024) -> relu -> dropout(0.5)
    -> fc2 Linear(1024,500) -> relu -> dropout(0.5) -> fc3 Linear(500,10) -> log_softmax(dim=1)
    """

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
        x = sn.flatten(x, 1)
        x = self.dropout1(F.relu(self.fc1(x)))
        x = self.dropout2(F.relu(self.fc2(x)))
        return F.log_softmax(self.fc3(x), dim=1)
