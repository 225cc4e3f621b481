"""Linear (and the linear op pair) against torch.nn.Linear, in both backends."""
import math

import numpy as np
import pytest
import torch

import scratchnet
import scratchnet.nn as snn
from scratchnet.backend import ops, use_backend
from scratchnet.backends.numba_backend import common as numba_common
from tests.helpers import BACKENDS, DTYPES, TORCH_DTYPE, assert_close, to_torch


@pytest.fixture(params=["serial", "parallel"])
def numba_path(request, monkeypatch):
    """Run numba kernels on the calling thread (small work) or split across threads."""
    if request.param == "parallel":
        monkeypatch.setattr(numba_common, "PARALLEL_MIN_WORK", 0)
    return request.param


def _twins(in_features, out_features, bias, dtype):
    """A scratchnet Linear and a torch Linear holding the same weights, in ``dtype``."""
    ours = snn.Linear(in_features, out_features, bias).to(dtype)
    theirs = torch.nn.Linear(in_features, out_features, bias, dtype=TORCH_DTYPE[dtype])
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(ours.weight.data))
        if bias:
            theirs.bias.copy_(torch.tensor(ours.bias.data))
    return ours, theirs


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_shape,out_features", [
    ((5,), 3),            # unbatched
    ((1, 5), 3),
    ((0, 5), 3),          # empty batch
    ((7, 13), 6),
    ((2, 4, 9), 5),       # extra leading dims
    ((3, 0, 4), 2),
    ((70, 33), 17),       # several row blocks in the numba kernel
    ((4, 0), 3),          # in_features 0
])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(rng, backend, dtype, in_shape, out_features, bias):
    ours, theirs = _twins(in_shape[-1], out_features, bias, dtype)
    x = rng.standard_normal(in_shape).astype(dtype)
    with use_backend(backend):
        out = ours(x)
        dout = rng.standard_normal(out.shape).astype(dtype)
        dx = ours.backward(dout)
    t = to_torch(x, requires_grad=True)
    y = theirs(t)
    y.backward(torch.tensor(dout))
    assert out.shape == tuple(y.shape) and out.dtype == dtype and dx.dtype == dtype
    assert_close(out, y, dtype, "out")
    assert_close(dx, t.grad, dtype, "dx")
    assert_close(ours.weight.grad, theirs.weight.grad, dtype, "dweight")
    if bias:
        assert_close(ours.bias.grad, theirs.bias.grad, dtype, "dbias")
    else:
        assert ours.bias is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_accumulate_like_torch(rng, backend):
    ours, theirs = _twins(6, 4, True, np.float64)
    xs = [rng.standard_normal((3, 6)) for _ in range(2)]
    with use_backend(backend):
        for x in xs:
            ours.backward(np.ones((3, 4)) * 0.5 + ours(x))
    for x in xs:
        y = theirs(to_torch(x))
        y.backward(0.5 + y.detach())
    assert_close(ours.weight.grad, theirs.weight.grad, np.float64, "dweight")
    assert_close(ours.bias.grad, theirs.bias.grad, np.float64, "dbias")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_numba_matches_numpy(numba_path, rng, dtype, bias):
    x = rng.standard_normal((50, 21)).astype(dtype)
    w = rng.standard_normal((8, 21)).astype(dtype)
    b = rng.standard_normal(8).astype(dtype) if bias else None
    dout = rng.standard_normal((50, 8)).astype(dtype)
    results = []
    for name in BACKENDS:
        out, cache = ops(name).linear_forward(x, w, b)
        results.append((out,) + ops(name).linear_backward(dout, cache))
    for a, c in zip(*results):
        if a is None:
            assert c is None
        else:
            assert_close(a, c, dtype)


def test_numpy_op_directional_gradient(rng):
    x, w, b = rng.standard_normal((6, 5)), rng.standard_normal((4, 5)), rng.standard_normal(4)
    vx, vw, vb = (rng.standard_normal(a.shape) for a in (x, w, b))
    out, cache = ops("numpy").linear_forward(x, w, b)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = ops("numpy").linear_backward(dout, cache)
    eps = 1e-6
    plus = ops("numpy").linear_forward(x + eps * vx, w + eps * vw, b + eps * vb)[0]
    minus = ops("numpy").linear_forward(x - eps * vx, w - eps * vw, b - eps * vb)[0]
    numeric = np.sum(dout * (plus - minus)) / (2 * eps)
    analytic = np.sum(dx * vx) + np.sum(dw * vw) + np.sum(db * vb)
    assert abs(numeric - analytic) <= 1e-7 * max(1.0, abs(numeric))


def test_default_init_is_torch_distribution():
    # torch: kaiming_uniform(a=√5) for the weight and U(±1/√fan_in) for the bias, both
    # U(-1/√in, 1/√in); different generators, so compare the distribution, not the values
    scratchnet.manual_seed(0)
    layer = snn.Linear(400, 300)
    bound = 1 / math.sqrt(400)
    assert layer.weight.data.dtype == np.float32 and layer.bias.data.dtype == np.float32
    assert layer.weight.shape == (300, 400) and layer.bias.shape == (300,)
    for p in (layer.weight.data, layer.bias.data):
        assert np.abs(p).max() <= bound
        assert np.abs(p).max() > 0.97 * bound
    # uniform on ±bound has variance bound²/3
    assert abs(layer.weight.data.var() / (bound * bound / 3) - 1) < 0.02
    scratchnet.manual_seed(0)
    again = snn.Linear(400, 300)
    np.testing.assert_array_equal(again.weight.data, layer.weight.data)
    np.testing.assert_array_equal(again.bias.data, layer.bias.data)


def test_repr_and_parameters_match_torch():
    for args in [(3, 4), (3, 4, False)]:
        ours, theirs = snn.Linear(*args), torch.nn.Linear(*args)
        assert repr(ours) == repr(theirs)
        assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]


def test_validation_errors():
    layer = snn.Linear(4, 2)
    with pytest.raises(ValueError,
                       match=r"Linear: expected input of shape \(\*, 4\), got shape \(2, 3\)"):
        layer(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"got shape \(\)"):
        layer(np.zeros((), np.float32))
    with pytest.raises(TypeError, match="input dtype float64 does not match weight dtype float32"):
        layer(np.zeros((2, 4)))
    with pytest.raises(TypeError, match="float32 or float64"):
        layer(np.zeros((2, 4), np.int64))
    with pytest.raises(ValueError, match="in_features"):
        snn.Linear(-1, 2)
    with pytest.raises(RuntimeError, match="before forward"):
        snn.Linear(4, 2).backward(np.zeros((1, 2), np.float32))
    out = layer(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"Linear.backward: expected dout of shape \(2, 2\)"):
        layer.backward(np.zeros((2, 3), np.float32))
    # a float64 gradient is cast to the output's float32, as torch's autograd does
    layer.backward(np.ones(out.shape, np.float64))
    assert layer.weight.grad.dtype == np.float32
