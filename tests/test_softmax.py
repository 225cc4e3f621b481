"""Softmax and LogSoftmax (and their op pairs) against torch, in both backends."""
import warnings

import numpy as np
import pytest
import torch

import scratchnet.nn as snn
from scratchnet.backend import ops, use_backend
from scratchnet.backends.numba_backend import common as numba_common
from tests.helpers import BACKENDS, DTYPES, assert_close, to_torch

LAYERS = [(snn.Softmax, torch.nn.Softmax), (snn.LogSoftmax, torch.nn.LogSoftmax)]


@pytest.fixture(params=["serial", "parallel"])
def numba_path(request, monkeypatch):
    """Run numba kernels on the calling thread (small work) or split across threads."""
    if request.param == "parallel":
        monkeypatch.setattr(numba_common, "PARALLEL_MIN_WORK", 0)
    return request.param


def _compare(backend, ours, theirs, x, dout):
    with use_backend(backend):
        out = ours(x)
        dx = ours.backward(dout)
    t = to_torch(x, requires_grad=True)
    y = theirs(t)
    y.backward(torch.tensor(dout))
    return out, dx, y.detach().numpy(), t.grad.numpy()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layers", LAYERS, ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("dim", [0, 1, 2, 3, -1, -3])
def test_every_dim_of_4d_matches_torch(rng, backend, dtype, layers, dim):
    x = (3 * rng.standard_normal((2, 3, 4, 5))).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    out, dx, t_out, t_dx = _compare(backend, layers[0](dim), layers[1](dim), x, dout)
    assert out.dtype == dtype and dx.dtype == dtype
    assert_close(out, t_out, dtype, "out")
    assert_close(dx, t_dx, dtype, "dx")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layers", LAYERS, ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("shape,dim", [((0, 10), 1), ((3, 0), 1), ((1, 10), 1), ((7,), 0),
                                       ((1,), 0), ((), 0), ((4, 1, 3), 1), ((5, 9), 0)])
def test_awkward_shapes_match_torch(rng, backend, dtype, layers, shape, dim):
    x = rng.standard_normal(shape).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    out, dx, t_out, t_dx = _compare(backend, layers[0](dim), layers[1](dim), x, dout)
    assert out.shape == shape and dx.shape == shape
    assert_close(out, t_out, dtype, "out")
    assert_close(dx, t_dx, dtype, "dx")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layers", LAYERS, ids=["softmax", "log_softmax"])
def test_large_logits_stay_finite(rng, backend, layers):
    # without subtracting the max, exp(1000) overflows
    x = rng.standard_normal((4, 6)) * 10 + np.array([[1000.0], [-1000.0], [0.0], [700.0]])
    dout = rng.standard_normal(x.shape)
    out, dx, t_out, t_dx = _compare(backend, layers[0](1), layers[1](1), x, dout)
    assert np.isfinite(out).all() and np.isfinite(dx).all()
    assert_close(out, t_out, np.float64, "out")
    assert_close(dx, t_dx, np.float64, "dx")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layers", LAYERS, ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("ndim", [0, 1, 2, 3, 4])
def test_implicit_dim_follows_torch(rng, backend, layers, ndim):
    # dim=None: torch's legacy rule (0 for 0-, 1- and 3-d inputs, else 1), with its warning
    x = rng.standard_normal((2, 3, 4, 5)[:ndim])
    dout = rng.standard_normal(x.shape)
    with pytest.warns(UserWarning, match="Implicit dimension choice"):
        with use_backend(backend):
            ours = layers[0]()
            out = ours(x)
            dx = ours.backward(dout)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = to_torch(x, requires_grad=True)
        y = layers[1]()(t)
    y.backward(torch.tensor(dout))
    assert_close(out, y, np.float64, "out")
    assert_close(dx, t.grad, np.float64, "dx")


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [0, 1, 2])
def test_numba_matches_numpy(numba_path, rng, name, dtype, dim):
    x = rng.standard_normal((3, 4, 5)).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    results = []
    for b in BACKENDS:
        out, cache = getattr(ops(b), f"{name}_forward")(x, dim)
        results.append((out, getattr(ops(b), f"{name}_backward")(dout, cache)))
    for a, c in zip(*results):
        assert_close(a, c, dtype)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dim", [0, 2])
def test_numpy_op_directional_gradient(rng, name, dim):
    x = rng.standard_normal((3, 4, 5))
    v = rng.standard_normal(x.shape)
    forward = getattr(ops("numpy"), f"{name}_forward")
    out, cache = forward(x, dim)
    dout = rng.standard_normal(out.shape)
    dx = getattr(ops("numpy"), f"{name}_backward")(dout, cache)
    eps = 1e-6
    numeric = np.sum(dout * (forward(x + eps * v, dim)[0] - forward(x - eps * v, dim)[0]))
    numeric /= 2 * eps
    assert abs(numeric - np.sum(dx * v)) <= 1e-7 * max(1.0, abs(numeric))


def test_repr_and_validation():
    for ours, theirs in LAYERS:
        assert repr(ours()) == repr(theirs())
        assert repr(ours(1)) == repr(theirs(1))
    with pytest.raises(IndexError, match=r"Softmax: dim=2 is out of range for a 2-d input"):
        snn.Softmax(2)(np.zeros((2, 3)))
    with pytest.raises(IndexError, match="LogSoftmax: dim=-3"):
        snn.LogSoftmax(-3)(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="float32 or float64"):
        snn.Softmax(0)(np.zeros(3, np.int32))
    with pytest.raises(RuntimeError, match="before forward"):
        snn.LogSoftmax(0).backward(np.zeros(3))
