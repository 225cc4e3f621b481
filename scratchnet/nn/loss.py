"""Loss layers with torch.nn's names and semantics: ``CrossEntropyLoss`` and ``NLLLoss``.

``loss(input, target)`` accepts what torch accepts: input (N, C), unbatched (C,), or
(N, C, d1, d2, ...) with target (N, d1, d2, ...). The layer moves C last and flattens to the
(rows, C) form the ops take; ``reduction="none"`` gives the loss back in target's shape.
``loss.backward(grad_output=None)`` returns d(input) in input's shape.
"""
import numpy as np

from .. import backend
from .module import Module

__all__ = ["CrossEntropyLoss", "NLLLoss"]

_REDUCTIONS = ("mean", "sum", "none")
_FLOATS = (np.float32, np.float64)
# the dtypes torch accepts for class indices ("expected target dtype to be Long or Byte")
_INDEX_DTYPES = (np.int64, np.uint8)


class _WeightedLoss(Module):
    """Shared argument checks, input flattening and backward for the class losses."""

    _probability_targets = False

    def __init__(self, weight=None, ignore_index=-100, reduction="mean"):
        super().__init__()
        name = type(self).__name__
        if reduction not in _REDUCTIONS:
            raise ValueError(f"{name}: {reduction!r} is not a valid value for reduction "
                             f"(expected one of 'mean', 'sum', 'none')")
        if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(
                ignore_index, (int, np.integer)):
            raise TypeError(f"{name}: expected an int ignore_index, got {ignore_index!r}")
        if weight is not None:
            weight = np.array(weight)
            if weight.ndim != 1 or not np.issubdtype(weight.dtype, np.floating):
                raise ValueError(f"{name}: expected weight to be a 1-D float array of shape (C,), "
                                 f"got shape {weight.shape} and dtype {weight.dtype}")
        self.weight = weight
        self.ignore_index = int(ignore_index)
        self.reduction = reduction
        self._cache = None

    def _flatten(self, input, target):
        """Check shapes and dtypes; return x (rows, C), target (rows,) or (rows, C), weight."""
        name = type(self).__name__
        x = np.asarray(input)
        if x.dtype.type not in _FLOATS:
            raise TypeError(f"{name}: expected input of dtype float32 or float64, got {x.dtype}")
        if x.ndim == 0:
            raise ValueError(f"{name}: expected input of shape (C,), (N, C) or (N, C, d1, ...), "
                             f"got shape ()")
        C = x.shape[0] if x.ndim == 1 else x.shape[1]
        if C == 0:
            raise ValueError(f"{name}: expected at least one class, got input of shape {x.shape}")
        t = np.asarray(target)
        index_shape = () if x.ndim == 1 else (x.shape[0],) + x.shape[2:]
        # torch's rule: a target of input's own shape holds class probabilities
        probabilities = self._probability_targets and t.shape == x.shape
        if probabilities:
            if not np.issubdtype(t.dtype, np.floating):
                raise TypeError(f"{name}: expected a floating-point target for class "
                                f"probabilities of shape {x.shape}, got dtype {t.dtype}")
            if self.ignore_index >= 0:
                raise ValueError(f"{name}: ignore_index is not supported for probability "
                                 f"targets, got ignore_index={self.ignore_index}")
            t = t.astype(x.dtype, copy=False)
        else:
            if t.shape != index_shape:
                expected = f"{index_shape} (class indices)"
                if self._probability_targets:
                    expected += f" or {x.shape} (class probabilities)"
                raise ValueError(f"{name}: expected target of shape {expected} for input of "
                                 f"shape {x.shape}, got {t.shape}")
            if t.dtype.type not in _INDEX_DTYPES:
                raise TypeError(f"{name}: expected class-index target of dtype int64 (or uint8), "
                                f"got {t.dtype}")
            t = t.astype(np.int64, copy=False)
            # one reduction settles the usual all-valid case (as uint64 a negative index is
            # huge); the mask only when needed
            in_range = t.size == 0 or int(t.view(np.uint64).max()) < C
            bad = None if in_range else (t != self.ignore_index) & ((t < 0) | (t >= C))
            if bad is not None and bad.any():
                # torch raises IndexError ("Target 5 is out of bounds.") too
                raise IndexError(f"{name}: target {int(t[bad].flat[0])} is out of bounds: expected "
                                 f"class indices in [0, {C}) or ignore_index={self.ignore_index}")
        weight = self.weight
        if weight is not None:
            if weight.shape != (C,):
                raise ValueError(f"{name}: weight should be defined for all {C} classes, got "
                                 f"weight of shape {weight.shape}")
            weight = weight.astype(x.dtype, copy=False)
        # move C last so each row holds one sample's (or one pixel's) scores
        if x.ndim == 2:  # the common (N, C) case, without moveaxis's Python-level overhead
            x2 = x
        else:
            x2 = x.reshape(1, C) if x.ndim == 1 else np.moveaxis(x, 1, -1).reshape(-1, C)
        if probabilities:
            t2 = t.reshape(1, C) if t.ndim == 1 else np.moveaxis(t, 1, -1).reshape(-1, C)
        else:
            t2 = t.reshape(-1)
        self._shapes = (x.shape, x.dtype, index_shape)
        return np.ascontiguousarray(x2), np.ascontiguousarray(t2), weight

    def _output(self, loss):
        return loss.reshape(self._shapes[2]) if self.reduction == "none" else loss

    def backward(self, grad_output=None):
        """d(loss)/d(input), in input's shape.

        ``grad_output`` defaults to 1 for a 0-d loss (reduced, or one unbatched sample with
        ``reduction="none"``); otherwise it is required and must have the loss's shape.
        """
        name = type(self).__name__
        if self._cache is None:
            raise RuntimeError(f"{name}.backward called before forward")
        ops, backward, cache = self._cache
        x_shape, dtype, loss_shape = self._shapes
        if self.reduction == "none":
            if grad_output is None:
                if loss_shape != ():
                    raise ValueError(f"{name}.backward: grad_output is required for "
                                     f"reduction='none' (expected an array of shape "
                                     f"{loss_shape})")
                # one unbatched sample: a 0-d loss, for which torch implies 1 too
                grad_output = 1.0
            g = np.asarray(grad_output, dtype=dtype)
            if g.shape != loss_shape:
                raise ValueError(f"{name}.backward: expected grad_output of shape {loss_shape}, "
                                 f"got {g.shape}")
            g = g.reshape(-1)
        else:
            g = np.asarray(1.0 if grad_output is None else grad_output, dtype=dtype)
            if g.shape != ():
                raise ValueError(f"{name}.backward: expected a scalar grad_output for "
                                 f"reduction={self.reduction!r}, got shape {g.shape}")
        dx = getattr(ops, backward)(g, cache)
        if len(x_shape) <= 2:
            return dx.reshape(x_shape)
        # undo the flattening: (N * d1 * ..., C) -> (N, d1, ..., C) -> (N, C, d1, ...)
        return np.moveaxis(dx.reshape((x_shape[0],) + x_shape[2:] + (x_shape[1],)), -1, 1)

    def extra_repr(self):
        parts = []
        if self.weight is not None:
            parts.append(f"weight=array(shape={self.weight.shape})")
        if self.ignore_index != -100:
            parts.append(f"ignore_index={self.ignore_index}")
        if self.reduction != "mean":
            parts.append(f"reduction={self.reduction!r}")
        return ", ".join(parts)


class NLLLoss(_WeightedLoss):
    """Negative log-likelihood of log-probabilities, as ``torch.nn.NLLLoss``.

    ``loss_i = -weight[t_i] * input[i, t_i]`` (0 where ``t_i == ignore_index``); "mean" divides
    the sum by the sum of ``weight[t_i]`` over rows that are not ignored (nan if there are none).

    Shapes: input (N, C), (C,) or (N, C, d1, ...); target (N,), () or (N, d1, ...) int64 class
    indices; output a 0-d array, or target's shape for ``reduction="none"``.
    """

    def __init__(self, weight=None, ignore_index=-100, reduction="mean"):
        super().__init__(weight, ignore_index, reduction)

    def forward(self, input, target):
        logp, t, weight = self._flatten(input, target)
        ops = backend.ops()
        loss, cache = ops.nll_loss_forward(logp, t, weight, self.ignore_index, self.reduction)
        # backward must use the backend that made the cache, even if the switch moves between
        self._cache = (ops, "nll_loss_backward", cache)
        return self._output(loss)


class CrossEntropyLoss(_WeightedLoss):
    """Cross-entropy between raw scores and targets, as ``torch.nn.CrossEntropyLoss``.

    Log-softmax over C (row max subtracted) fused with the negative log-likelihood. Targets are
    class indices (int64, shape of input without C) or class probabilities (input's shape).
    ``label_smoothing`` eps mixes the target with the uniform distribution:
    ``loss = (1 - eps) * nll + eps / C * sum_c -weight[c] * log_softmax(x)[c]``, the second term
    masked and normalised like the first; probability targets become ``t (1 - eps) + eps / C``.
    "mean" divides by the weight sum of non-ignored targets (class indices) or by the number of
    rows (probabilities).

    Shapes: input (N, C), (C,) or (N, C, d1, ...); output a 0-d array, or target's shape
    without C for ``reduction="none"``.
    """

    _probability_targets = True

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__(weight, ignore_index, reduction)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be between 0.0 and 1.0, "
                             f"got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, input, target):
        x, t, weight = self._flatten(input, target)
        ops = backend.ops()
        loss, cache = ops.cross_entropy_forward(x, t, weight, self.ignore_index, self.reduction,
                                                self.label_smoothing)
        self._cache = (ops, "cross_entropy_backward", cache)
        return self._output(loss)

    def extra_repr(self):
        base = super().extra_repr()
        if self.label_smoothing:
            base = ", ".join(filter(None, [base, f"label_smoothing={self.label_smoothing}"]))
        return base
