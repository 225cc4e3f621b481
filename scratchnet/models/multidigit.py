"""Two-digit models: read a 42 x 28 canvas of two overlapping digits, name both (MITx 6.86x).

Each network ends in one Linear layer of 20 outputs; :class:`TwoHeads` splits them into the
first digit's logits (columns 0..9) and the second digit's (10..19), and in backward joins the
two heads' gradients back into one (N, 20) array, which the model's tape (nn/tape.py) sends
on through the layers.

    model = MultiCNN()
    first, second = model(x)                       # x (N, 1, 42, 28) -> (N, 10), (N, 10)
    loss = TwoDigitLoss()((first, second), y)      # y (N, 2) or (2, N) digit labels
    model.backward(loss.backward())                # loss.backward() -> (d_first, d_second)
"""
import numpy as np

from .. import nn

NUM_CLASSES = 10


class TwoHeads(nn.Module):
    """Split (N, 2C) scores into two heads of (N, C); backward joins ``(d_a, d_b)`` into (N, 2C).

    The torch twin is ``(out[:, :C], out[:, C:])``: slicing sends each head's gradient back to
    its own columns, which is what the concatenation in :meth:`backward` does.
    """

    def __init__(self, num_classes=NUM_CLASSES):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
                or num_classes < 1:
            raise ValueError(f"TwoHeads: num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self._input = None

    def forward(self, x):
        """(N, 2C) -> ((N, C), (N, C)), both C-contiguous copies."""
        x = np.asarray(x)
        c = self.num_classes
        if x.ndim != 2 or x.shape[1] != 2 * c:
            raise ValueError(
                f"TwoHeads: expected input of shape (N, {2 * c}), got shape {x.shape}")
        self._input = (x.shape, x.dtype)
        return np.ascontiguousarray(x[:, :c]), np.ascontiguousarray(x[:, c:])

    def backward(self, dout):
        """(d_a, d_b), each (N, C) or None (a head that got no loss) -> d input (N, 2C)."""
        if self._input is None:
            raise RuntimeError("TwoHeads: backward called before forward")
        if not isinstance(dout, (tuple, list)) or len(dout) != 2:
            raise TypeError(
                f"TwoHeads: backward expects a pair (d_first, d_second), "
                f"got {type(dout).__name__}")
        shape, dtype = self._input
        head_shape = (shape[0], self.num_classes)
        grads = []
        for name, g in zip(("d_first", "d_second"), dout):
            if g is None:
                grads.append(np.zeros(head_shape, dtype=dtype))
                continue
            g = np.asarray(g)
            if g.shape != head_shape:
                raise ValueError(
                    f"TwoHeads: {name} must have the head's shape {head_shape}, got {g.shape}")
            grads.append(g)
        return np.concatenate(grads, axis=1).astype(dtype, copy=False)

    def extra_repr(self):
        return f"num_classes={self.num_classes}"


class MultiMLP(nn.Module):
    """(N, 1, 42, 28) -> (first, second) logits, each (N, 10).

    flatten-linear1(1176, 64)-linear2(64, 20), no activation in between (as the tutorial
    writes it), then the 20 scores split into two heads.
    """

    input_shape = (1, 42, 28)

    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear1 = nn.Linear(42 * 28, 64)
        self.linear2 = nn.Linear(64, 2 * NUM_CLASSES)
        self.heads = TwoHeads(NUM_CLASSES)

    def forward(self, x):
        return self.heads(self.linear2(self.linear1(self.flatten(x))))


class MultiCNN(nn.Module):
    """(N, 1, 42, 28) -> (first, second) logits, each (N, 10).

    layers: Conv2d(1,32,4)-ReLU-MaxPool2d(2,2)-Conv2d(32,64,4)-ReLU-MaxPool2d(2,2)  -> (N, 64, 8, 4)
            -Flatten-Linear(2048,128)-ReLU-Dropout(0.5)-Linear(128,20)
    then the 20 scores split into two heads.
    """

    input_shape = (1, 42, 28)

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(1, 32, 4), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, 4), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Flatten(), nn.Linear(2048, 128), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(128, 2 * NUM_CLASSES))
        self.heads = TwoHeads(NUM_CLASSES)

    def forward(self, x):
        return self.heads(self.layers(x))


def split_pair_labels(target, n):
    """Two-digit labels in any of the accepted layouts -> (first (n,), second (n,)) int64.

    target: (n, 2) one row per sample (what batches of ``labels.T`` hold), (2, n) the dataset's
    layout (first digits, second digits), or a pair ``(first, second)`` of (n,) arrays. A
    (2, 2) array is read as (n, 2), the batch layout.
    """
    if isinstance(target, (tuple, list)):
        if len(target) != 2:
            raise ValueError(
                f"TwoDigitLoss: target as a sequence must be a pair (first, second), "
                f"got {len(target)} items")
        first, second = (np.asarray(t) for t in target)
    else:
        target = np.asarray(target)
        if target.ndim == 2 and target.shape == (n, 2):
            first, second = target[:, 0], target[:, 1]
        elif target.ndim == 2 and target.shape == (2, n):
            first, second = target[0], target[1]
        else:
            raise ValueError(
                f"TwoDigitLoss: expected target of shape ({n}, 2) or (2, {n}) for {n} samples, "
                f"got shape {target.shape}")
    for name, t in (("first", first), ("second", second)):
        if t.shape != (n,):
            raise ValueError(
                f"TwoDigitLoss: {name}-digit target must have shape ({n},), got {t.shape}")
    return np.ascontiguousarray(first), np.ascontiguousarray(second)


class TwoDigitLoss(nn.Module):
    """The tutorial's joint loss: ``0.5 * (CE(first, y_first) + CE(second, y_second))``.

    Each term is a :class:`scratchnet.nn.CrossEntropyLoss` built with the given arguments
    (torch's names and defaults). ``forward((first, second), target)`` takes the two heads'
    (N, C) logits and labels as (N, 2), (2, N) or a pair (see :func:`split_pair_labels`);
    it returns the mean of the two losses and keeps both in ``self.losses`` for reporting.
    ``backward(grad_output=None)`` returns ``(d_first, d_second)``, what a two-head model's
    ``backward`` takes.
    """

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__()
        kwargs = dict(weight=weight, ignore_index=ignore_index, reduction=reduction,
                      label_smoothing=label_smoothing)
        self.first = nn.CrossEntropyLoss(**kwargs)
        self.second = nn.CrossEntropyLoss(**kwargs)
        self.losses = None

    def forward(self, input, target):
        """((N, C), (N, C)) logits and (N, 2) / (2, N) labels -> mean of the two cross-entropies."""
        if not isinstance(input, (tuple, list)) or len(input) != 2:
            raise TypeError(
                f"TwoDigitLoss: input must be the pair (first_logits, second_logits) a two-head "
                f"model returns, got {type(input).__name__}")
        first, second = (np.asarray(x) for x in input)
        if first.ndim != 2 or first.shape != second.shape:
            raise ValueError(
                f"TwoDigitLoss: expected two logits arrays of one shape (N, C), got "
                f"{first.shape} and {second.shape}")
        y_first, y_second = split_pair_labels(target, first.shape[0])
        loss_first = self.first(first, y_first)
        loss_second = self.second(second, y_second)
        self.losses = (loss_first, loss_second)
        half = np.asarray(loss_first).dtype.type(0.5)
        return (loss_first + loss_second) * half

    def backward(self, grad_output=None):
        """d loss / d logits for both heads: ``(d_first, d_second)``, each (N, C).

        grad_output: the upstream gradient of the returned loss (None means 1), a scalar or,
        for reduction="none", an (N,) array; each head receives half of it.
        """
        if self.losses is None:
            raise RuntimeError("TwoDigitLoss: backward called before forward")
        dtype = np.asarray(self.losses[0]).dtype
        if grad_output is None:
            half = np.asarray(0.5, dtype=dtype)
        else:
            half = np.asarray(grad_output, dtype=dtype) * dtype.type(0.5)
        return self.first.backward(half), self.second.backward(half)

    def extra_repr(self):
        return self.first.extra_repr()
