"""Test reports: the metrics of an evaluation, and the same in words for people.

Numbers go to metrics.json and back to Python as dicts; the ``*_text`` functions write the
lines ``scratchnet`` prints (and a notebook may print): "accuracy 91.00%", per-class tables.
"""
import math

from .. import training

HEADS = ("first", "second")


def confusion(labels, predictions):
    """The confusion matrix, or for two digits the list (first digit's, second digit's)."""
    if labels.ndim == 1:
        return training.confusion_matrix(labels, predictions)
    return [training.confusion_matrix(labels[:, h], predictions[:, h]) for h in range(2)]


def test_report(result, labels):
    """(metrics as metrics.json stores them, confusion matrices) of an evaluation ``result``
    on ``labels``: ``test_`` loss and accuracy, per-class accuracy and confusion matrix (two
    digits: both digits' summed, and each digit's, ``_first``/``_second``)."""
    matrices = confusion(labels, result["predictions"])
    report = {"test_samples": int(len(labels)), "test_loss": result["loss"],
              "test_accuracy": result["accuracy"]}
    report.update({f"test_{k}": v for k, v in result.items()
                   if k not in ("loss", "accuracy", "predictions")})
    matrix = matrices if labels.ndim == 1 else sum(matrices)
    report["per_class_accuracy"] = training.per_class_accuracy(matrix).tolist()
    report["confusion_matrix"] = matrix.tolist()
    if labels.ndim == 2:
        for head, m in zip(HEADS, matrices):
            report[f"per_class_accuracy_{head}"] = training.per_class_accuracy(m).tolist()
            report[f"confusion_matrix_{head}"] = m.tolist()
    return report, matrices


def percent(v):
    """"91.00%", or "n/a" for None or NaN."""
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}%"


def accuracy_text(m, prefix=""):
    """"accuracy 91.00%", and for two digits " (first 93.00%, second 95.00%, both 88.50%)"."""
    text = f"accuracy {percent(m[f'{prefix}accuracy'])}"
    if f"{prefix}accuracy_both" in m:
        text += (f" (first {percent(m[f'{prefix}accuracy_first'])}, second "
                 f"{percent(m[f'{prefix}accuracy_second'])}, both "
                 f"{percent(m[f'{prefix}accuracy_both'])})")
    return text


def loss_text(m, prefix=""):
    """"loss 0.1234", and for two digits " (first 0.1000, second 0.1468)"."""
    text = f"loss {m[f'{prefix}loss']:.4f}"
    if f"{prefix}loss_first" in m:
        text += f" (first {m[f'{prefix}loss_first']:.4f}, second {m[f'{prefix}loss_second']:.4f})"
    return text


def epoch_text(record, epochs):
    """"epoch 2/5: train loss ... accuracy ... | val ... | 9000 samples/s, 3.1 s"."""
    line = (f"epoch {record['epoch']}/{epochs}: train {loss_text(record, 'train_')} "
            f"{accuracy_text(record, 'train_')}")
    if record["val_loss"] is not None:
        line += f" | val {loss_text(record, 'val_')} {accuracy_text(record, 'val_')}"
    return line + f" | {record['samples_per_s']:.0f} samples/s, {record['seconds']:.1f} s"


def class_table_text(matrix, per_class, classes=None, what=""):
    """Per-class accuracy on one line (class names where given), then the confusion matrix."""
    names = classes or [str(c) for c in range(len(matrix))]
    width = max(4, len(str(matrix.max())) + 1)
    lines = [f"per-class accuracy{what}: " + "  ".join(f"{n}: {percent(a)}"
                                                      for n, a in zip(names, per_class)),
             f"confusion matrix{what} (rows: true class, columns: predicted class):",
             "true\\pred" + "".join(f"{c:>{width}}" for c in range(len(matrix)))]
    lines += [f"{r:>9}" + "".join(f"{v:>{width}}" for v in row) for r, row in enumerate(matrix)]
    return "\n".join(lines)


def evaluation_text(result):
    """What ``scratchnet evaluate`` prints for :meth:`Run.evaluate`'s ``result``."""
    lines = [f"{result['model']} on {result['samples']} {result['data']} test images: "
             f"{accuracy_text(result)}, {loss_text(result)}"]
    if result["labels"].ndim == 1:
        lines.append(class_table_text(result["confusion_matrix"], result["per_class_accuracy"],
                                      result["classes"]))
    else:
        for head, matrix, per_class in zip(HEADS, result["confusion_matrix"],
                                           result["per_class_accuracy"]):
            lines.append(class_table_text(matrix, per_class, result["classes"],
                                          f", {head} digit"))
    return "\n".join(lines)
