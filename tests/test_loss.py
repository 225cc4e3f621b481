"""CrossEntropyLoss / NLLLoss and their ops against torch.nn.functional: value and gradient."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scratchnet import backend, nn
from scratchnet.backend import use_backend

from tests.helpers import BACKENDS, DTYPES, assert_close, to_torch

REDUCTIONS = ("mean", "sum", "none")
# input shapes: empty batch, batch 1, odd batch, extra spatial dims, unbatched (C,)
SHAPES = ((0, 5), (1, 5), (7, 5), (3, 4, 2, 3), (6,))


def _index_shape(shape):
    return () if len(shape) == 1 else (shape[0],) + shape[2:]


def _class_targets(rng, shape, ignore_index):
    """Random class indices for input ``shape``, with some set to ``ignore_index``."""
    C = shape[0] if len(shape) == 1 else shape[1]
    t = rng.integers(0, C, size=_index_shape(shape))
    if t.size > 2:
        t.flat[::3] = ignore_index
    return t


def _weight(rng, C, use, dtype):
    return rng.uniform(0.2, 2.0, C).astype(dtype) if use else None


def _compare(layer, torch_fn, x, target, dtype, rng, grad_output=True):
    """Run ``layer`` and ``torch_fn`` on the same data; compare the loss and d(input)."""
    loss = layer(x, target)
    xt = to_torch(x, requires_grad=True)
    lt = torch_fn(xt)
    assert loss.shape == tuple(lt.shape) and loss.dtype == dtype
    go = rng.standard_normal(loss.shape).astype(dtype) if grad_output else None
    lt.backward(None if go is None else to_torch(go))
    dx = layer.backward(go)
    assert dx.shape == x.shape and dx.dtype == dtype
    assert_close(loss, lt, dtype, "loss")
    assert_close(dx, xt.grad, dtype, "d(input)")


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("use_weight", (False, True))
@pytest.mark.parametrize("label_smoothing", (0.0, 0.3))
@pytest.mark.parametrize("ignore_index", (-100, 1))
def test_cross_entropy_class_targets(be, dtype, shape, reduction, use_weight, label_smoothing,
                                     ignore_index):
    rng = np.random.default_rng(0)
    C = shape[0] if len(shape) == 1 else shape[1]
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    t = _class_targets(rng, shape, ignore_index)
    w = _weight(rng, C, use_weight, dtype)
    layer = nn.CrossEntropyLoss(weight=w, ignore_index=ignore_index, reduction=reduction,
                                label_smoothing=label_smoothing)

    def torch_fn(xt):
        return F.cross_entropy(xt, torch.tensor(t), weight=None if w is None else to_torch(w),
                               ignore_index=ignore_index, reduction=reduction,
                               label_smoothing=label_smoothing)
    with use_backend(be):
        if shape[0] == 0 and reduction == "mean":
            # torch: the mean over no targets is nan; the gradient is empty
            loss = layer(x, t)
            assert np.isnan(loss) and np.isnan(torch_fn(to_torch(x)).item())
            assert layer.backward().shape == x.shape
        else:
            _compare(layer, torch_fn, x, t, dtype, rng)


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("use_weight", (False, True))
@pytest.mark.parametrize("label_smoothing", (0.0, 0.3))
def test_cross_entropy_probability_targets(be, dtype, shape, reduction, use_weight,
                                           label_smoothing):
    rng = np.random.default_rng(1)
    C = shape[0] if len(shape) == 1 else shape[1]
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    # rows need not sum to 1: torch doesn't require it, so neither the math nor the test does
    t = rng.uniform(0, 1, shape).astype(dtype)
    w = _weight(rng, C, use_weight, dtype)
    layer = nn.CrossEntropyLoss(weight=w, reduction=reduction, label_smoothing=label_smoothing)

    def torch_fn(xt):
        return F.cross_entropy(xt, to_torch(t), weight=None if w is None else to_torch(w),
                               reduction=reduction, label_smoothing=label_smoothing)
    with use_backend(be):
        if shape[0] == 0 and reduction == "mean":
            assert np.isnan(layer(x, t)) and np.isnan(torch_fn(to_torch(x)).item())
        else:
            _compare(layer, torch_fn, x, t, dtype, rng)


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("use_weight", (False, True))
@pytest.mark.parametrize("ignore_index", (-100, 1))
def test_nll_loss(be, dtype, shape, reduction, use_weight, ignore_index):
    rng = np.random.default_rng(2)
    C = shape[0] if len(shape) == 1 else shape[1]
    x = rng.standard_normal(shape).astype(dtype)  # any real "log-probabilities" will do
    t = _class_targets(rng, shape, ignore_index)
    w = _weight(rng, C, use_weight, dtype)
    layer = nn.NLLLoss(weight=w, ignore_index=ignore_index, reduction=reduction)

    def torch_fn(xt):
        return F.nll_loss(xt, torch.tensor(t), weight=None if w is None else to_torch(w),
                          ignore_index=ignore_index, reduction=reduction)
    with use_backend(be):
        if shape[0] == 0 and reduction == "mean":
            assert np.isnan(layer(x, t)) and np.isnan(torch_fn(to_torch(x)).item())
        else:
            _compare(layer, torch_fn, x, t, dtype, rng)


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("cls", ("CrossEntropyLoss", "NLLLoss"))
def test_default_grad_output_is_one(be, cls, rng):
    x = rng.standard_normal((4, 3))
    t = np.array([0, 2, 1, 2])
    layer = getattr(nn, cls)()
    xt = to_torch(x, requires_grad=True)
    getattr(F, "cross_entropy" if cls == "CrossEntropyLoss" else "nll_loss")(
        xt, torch.tensor(t)).backward()
    with use_backend(be):
        layer(x, t)
        assert_close(layer.backward(), xt.grad, np.float64)


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("label_smoothing", (0.0, 0.2))
@pytest.mark.parametrize("case", ("all ignored", "zero-weight targets", "uint8 targets"))
def test_degenerate_targets_match_torch(be, label_smoothing, case, rng):
    """nan and 0 land where torch puts them when the weight sum of the mean is 0."""
    x = rng.standard_normal((4, 3))
    w = np.array([0.0, 1.0, 2.0])
    if case == "all ignored":
        t = np.full(4, -100)
    elif case == "zero-weight targets":
        t = np.array([0, 0, -100, 0])
    else:
        t = np.array([0, 2, 1, 1], dtype=np.uint8)
    xt = to_torch(x, requires_grad=True)
    # torch's own label-smoothing path rejects uint8 indices (a gather), so it gets int64
    lt = F.cross_entropy(xt, torch.tensor(t.astype(np.int64)), weight=torch.tensor(w),
                         label_smoothing=label_smoothing)
    lt.backward()
    with use_backend(be):
        layer = nn.CrossEntropyLoss(weight=w, label_smoothing=label_smoothing)
        loss = layer(x, t)
        dx = layer.backward()
    np.testing.assert_allclose(loss, lt.item(), rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-15, equal_nan=True)


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_large_logits_stable(be, dtype, rng):
    """The row max is subtracted: logits in the thousands neither overflow nor lose the answer."""
    x = (1000 * rng.standard_normal((6, 4))).astype(dtype)
    t = rng.integers(0, 4, 6)
    xt = to_torch(x, requires_grad=True)
    F.cross_entropy(xt, torch.tensor(t), label_smoothing=0.1).backward()
    with use_backend(be):
        layer = nn.CrossEntropyLoss(label_smoothing=0.1)
        loss = layer(x, t)
        dx = layer.backward()
    assert np.isfinite(loss) and np.all(np.isfinite(dx))
    assert_close(loss, F.cross_entropy(to_torch(x), torch.tensor(t), label_smoothing=0.1), dtype)
    assert_close(dx, xt.grad, dtype)


def _ce_op_cases(rng, dtype):
    """(x, target, weight, ignore_index, label_smoothing) covering both target kinds."""
    x = (2 * rng.standard_normal((9, 7))).astype(dtype)
    idx = rng.integers(0, 7, 9)
    idx[[2, 5]] = -100
    idx3 = idx.copy()
    idx3[[2, 5]] = 3  # an ignore_index that is also a valid class
    prob = rng.uniform(0, 1, (9, 7)).astype(dtype)
    w = rng.uniform(0.1, 3, 7).astype(dtype)
    return [(x, idx, None, -100, 0.0), (x, idx, w, -100, 0.25), (x, idx3, w, 3, 0.0),
            (x, idx3, None, 3, 0.5), (x, prob, None, -100, 0.0), (x, prob, w, -100, 0.4)]


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_numpy_cross_entropy_finite_differences(reduction):
    """The numpy op's gradient against central differences along random directions, float64."""
    rng = np.random.default_rng(3)
    ops = backend.ops("numpy")
    for x, t, w, ii, ls in _ce_op_cases(rng, np.float64):
        loss, cache = ops.cross_entropy_forward(x, t, w, ii, reduction, ls)
        go = rng.standard_normal(loss.shape)
        dx = ops.cross_entropy_backward(go, cache)
        for _ in range(3):
            v = rng.standard_normal(x.shape)
            h = 1e-5

            def f(z):
                return float(np.sum(ops.cross_entropy_forward(z, t, w, ii, reduction, ls)[0] * go))
            numeric = (f(x + h * v) - f(x - h * v)) / (2 * h)
            analytic = float(np.sum(dx * v))
            assert abs(numeric - analytic) <= 1e-7 * max(1.0, abs(analytic))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_numba_ops_match_numpy_ops(dtype, reduction):
    """Same names, same signatures, same numbers: numba kernels against the numpy spec."""
    rng = np.random.default_rng(4)
    ref, fast = backend.ops("numpy"), backend.ops("numba")
    for x, t, w, ii, ls in _ce_op_cases(rng, dtype):
        l1, c1 = ref.cross_entropy_forward(x, t, w, ii, reduction, ls)
        l2, c2 = fast.cross_entropy_forward(x, t, w, ii, reduction, ls)
        go = rng.standard_normal(l1.shape).astype(dtype)
        assert l2.shape == l1.shape and l2.dtype == l1.dtype
        assert_close(l2, l1, dtype, "cross_entropy loss")
        assert_close(fast.cross_entropy_backward(go, c2), ref.cross_entropy_backward(go, c1),
                     dtype, "cross_entropy dx")
        if t.ndim == 1:
            logp = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
            l1, c1 = ref.nll_loss_forward(logp, t, w, ii, reduction)
            l2, c2 = fast.nll_loss_forward(logp, t, w, ii, reduction)
            assert_close(l2, l1, dtype, "nll loss")
            assert_close(fast.nll_loss_backward(go, c2), ref.nll_loss_backward(go, c1), dtype,
                         "nll dlogp")


def test_backward_uses_the_backend_of_its_forward(rng):
    """The caches differ between backends: switching in between must not break backward."""
    x = rng.standard_normal((3, 4))
    t = np.array([1, 0, 3])
    layer = nn.CrossEntropyLoss()
    with use_backend("numba"):
        layer(x, t)
    with use_backend("numpy"):
        dx = layer.backward()
    xt = to_torch(x, requires_grad=True)
    F.cross_entropy(xt, torch.tensor(t)).backward()
    assert_close(dx, xt.grad, np.float64)


def test_ops_export_their_names():
    names = {"nll_loss_forward", "nll_loss_backward", "cross_entropy_forward",
             "cross_entropy_backward"}
    for be in BACKENDS:
        assert names <= set(dir(backend.ops(be)))
    assert {"CrossEntropyLoss", "NLLLoss"} <= set(nn.__dict__)


@pytest.mark.parametrize("make, x, t, err, match", [
    (lambda: nn.CrossEntropyLoss(), np.zeros((2, 3), np.int64), np.zeros(2, np.int64),
     TypeError, "CrossEntropyLoss: expected input of dtype float32 or float64, got int64"),
    (lambda: nn.CrossEntropyLoss(), np.zeros(()), np.zeros((), np.int64),
     ValueError, r"CrossEntropyLoss: expected input of shape .*got shape \(\)"),
    (lambda: nn.CrossEntropyLoss(), np.zeros((2, 3)), np.zeros(2, np.int32),
     TypeError, "CrossEntropyLoss: expected class-index target of dtype int64.*got int32"),
    (lambda: nn.CrossEntropyLoss(), np.zeros((2, 3)), np.zeros(3, np.int64),
     ValueError, r"expected target of shape \(2,\) \(class indices\) or \(2, 3\) "
                 r"\(class probabilities\) for input of shape \(2, 3\), got \(3,\)"),
    (lambda: nn.CrossEntropyLoss(), np.zeros((2, 3, 4)), np.zeros((2, 5), np.int64),
     ValueError, r"expected target of shape \(2, 4\)"),
    (lambda: nn.CrossEntropyLoss(), np.zeros((2, 3)), np.zeros((2, 3), np.int64),
     TypeError, "expected a floating-point target for class probabilities"),
    (lambda: nn.CrossEntropyLoss(ignore_index=0), np.zeros((2, 3)), np.zeros((2, 3)),
     ValueError, "ignore_index is not supported for probability targets"),
    (lambda: nn.CrossEntropyLoss(), np.zeros((2, 3)), np.array([0, 3]),
     IndexError, r"CrossEntropyLoss: target 3 is out of bounds: expected class indices in "
                 r"\[0, 3\) or ignore_index=-100"),
    (lambda: nn.NLLLoss(), np.zeros((2, 3)), np.array([-1, 0]),
     IndexError, "NLLLoss: target -1 is out of bounds"),
    (lambda: nn.NLLLoss(), np.zeros((2, 3)), np.zeros((2, 3)),
     ValueError, r"NLLLoss: expected target of shape \(2,\) \(class indices\) for input"),
    (lambda: nn.NLLLoss(weight=np.ones(4)), np.zeros((2, 3)), np.array([0, 1]),
     ValueError, r"NLLLoss: weight should be defined for all 3 classes, got weight of "
                 r"shape \(4,\)"),
    (lambda: nn.CrossEntropyLoss(), np.zeros((2, 0)), np.zeros(2, np.int64),
     ValueError, "expected at least one class"),
])
def test_bad_inputs_raise_clear_errors(make, x, t, err, match):
    with pytest.raises(err, match=match):
        make()(x, t)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="CrossEntropyLoss: 'avg' is not a valid value for "
                                         "reduction"):
        nn.CrossEntropyLoss(reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing must be between 0.0 and 1.0, got 1.5"):
        nn.CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"NLLLoss: expected weight to be a 1-D float array"):
        nn.NLLLoss(weight=np.ones((2, 2)))
    with pytest.raises(TypeError, match="NLLLoss: expected an int ignore_index"):
        nn.NLLLoss(ignore_index=1.5)


def test_bad_backward_calls():
    with pytest.raises(RuntimeError, match="CrossEntropyLoss.backward called before forward"):
        nn.CrossEntropyLoss().backward()
    x, t = np.zeros((2, 3)), np.array([0, 1])
    layer = nn.CrossEntropyLoss(reduction="none")
    layer(x, t)
    with pytest.raises(ValueError, match=r"grad_output is required for reduction='none' "
                                         r"\(expected an array of shape \(2,\)\)"):
        layer.backward()
    with pytest.raises(ValueError, match=r"expected grad_output of shape \(2,\), got \(3,\)"):
        layer.backward(np.ones(3))
    layer = nn.NLLLoss()
    layer(x, t)
    with pytest.raises(ValueError, match=r"NLLLoss.backward: expected a scalar grad_output"):
        layer.backward(np.ones(2))


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("cls", ("CrossEntropyLoss", "NLLLoss"))
def test_unbatched_none_reduction_is_0d_and_backward_implies_one(be, cls, rng):
    """One unbatched sample with reduction="none" gives a 0-d loss; ``backward()`` with no
    argument then takes 1 as torch's ``loss.backward()`` does."""
    x = rng.standard_normal(5)
    target = np.array(3)
    layer = getattr(nn, cls)(reduction="none")
    with use_backend(be):
        loss = layer(x, target)
        dx = layer.backward()
    tx = torch.tensor(x, requires_grad=True)
    tloss = getattr(torch.nn, cls)(reduction="none")(tx, torch.tensor(3))
    tloss.backward()
    assert np.shape(loss) == () == tuple(tloss.shape)
    assert_close(loss, tloss, np.float64, "loss")
    assert_close(dx, tx.grad, np.float64, "d input")
