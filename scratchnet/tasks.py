"""Tasks: how a model's output is scored against its targets.

The trainer knows nothing about heads or loss functions. It asks the task for

- ``loss(out, y)``: the mini-batch loss as a Python float (and keeps what backward needs);
- ``backward()``: the upstream gradient for ``model.backward``, shaped like ``out``;
- ``predict(out)``: predicted labels shaped like ``y``, so accuracy is ``mean(predict == y)``;
- ``probabilities(out)``: per-class probabilities, for ``scratchnet predict``;
- ``metric_sums(out, y)``: extra metrics of the batch as sums over its samples (after ``loss``);
  the trainer divides them by the number of samples and reports them next to loss and accuracy.

A two-headed model (``out`` a tuple of two logit arrays, ``y`` of shape (N, 2)) needs only a new
task whose loss is the mean of two cross-entropies and whose backward returns a tuple.
"""
import numpy as np

from . import nn

OUTPUT_KINDS = ("logits", "log_probs")


class Classification:
    """One head: ``out`` (N, C) logits or log-probabilities; ``y`` (N,) int64 class indices.

    Logits are scored with ``CrossEntropyLoss``; log-probabilities (a model ending in
    ``log_softmax``) with ``NLLLoss``, as their tutorials do. Both average over the batch.
    """

    name = "classification"

    def __init__(self, output="logits"):
        if output not in OUTPUT_KINDS:
            raise ValueError(
                f"Classification: output must be one of {', '.join(OUTPUT_KINDS)}, got {output!r}")
        self.output = output
        self.loss_fn = nn.CrossEntropyLoss() if output == "logits" else nn.NLLLoss()

    def loss(self, out, y):
        """Mean loss of the batch, as a float."""
        return float(self.loss_fn(out, y))

    def backward(self):
        """d(loss)/d(out) for the last ``loss`` call, shape (N, C)."""
        return self.loss_fn.backward()

    def predict(self, out):
        """Predicted classes (N,) int64: the arg-max of the scores."""
        return np.argmax(out, axis=1).astype(np.int64)

    def probabilities(self, out):
        """Class probabilities (N, C) in float64, rows summing to 1."""
        out = np.asarray(out, dtype=np.float64)
        if self.output == "log_probs":
            return np.exp(out)
        shifted = np.exp(out - out.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    def metric_sums(self, out, y):
        """Nothing beyond loss and accuracy for one head."""
        return {}


class TwoDigitClassification:
    """Two heads: ``out`` a pair of (N, C) logits; ``y`` (N, 2), one column per digit.

    The loss is the mean of the two cross-entropies (``models.multidigit.TwoDigitLoss``);
    backward returns the pair of gradients a two-head model's ``backward`` takes. Predictions
    are (N, 2), so accuracy counts each digit (the mean of the two digits' accuracies);
    :meth:`metric_sums` adds each digit's loss and accuracy and the both-digits-right accuracy.
    """

    METRICS = ("loss_first", "loss_second", "accuracy_first", "accuracy_second",
               "accuracy_both")

    name = "two_digit_classification"

    def __init__(self):
        from .models.multidigit import TwoDigitLoss
        self.loss_fn = TwoDigitLoss()

    def loss(self, out, y):
        return float(self.loss_fn(out, y))

    def backward(self):
        return self.loss_fn.backward()

    def predict(self, out):
        return np.stack([np.argmax(head, axis=1) for head in out], axis=1).astype(np.int64)

    def probabilities(self, out):
        """(N, 2, C): each head's softmax."""
        return np.stack([Classification("logits").probabilities(head) for head in out], axis=1)

    def metric_sums(self, out, y):
        """Sums over the batch of each head's loss, each digit right, and both digits right.

        Must follow ``loss(out, y)`` on the same batch: the per-head losses are the ones it
        computed (each a batch mean, so times the batch size is the sum).
        """
        n = len(y)
        right = self.predict(out) == np.asarray(y).reshape(n, 2)
        first, second = (float(v) for v in self.loss_fn.losses)
        return {"loss_first": first * n, "loss_second": second * n,
                "accuracy_first": int(right[:, 0].sum()),
                "accuracy_second": int(right[:, 1].sum()),
                "accuracy_both": int(right.all(axis=1).sum())}


def for_model(output):
    """The task that trains a model whose ``models.OUTPUTS`` entry is ``output``."""
    if output == "two_logits":
        return TwoDigitClassification()
    return Classification(output)
