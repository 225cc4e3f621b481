"""ReLU and LeakyReLU (and their op pairs) against torch, in both backends."""
import numpy as np
import pytest
import torch

import scratchnet.nn as snn
from scratchnet.backend import ops, use_backend
from scratchnet.backends.numba_backend import common as numba_common
from tests.helpers import BACKENDS, DTYPES, assert_close, to_torch

SHAPES = [(0, 3), (1,), (7,), (2, 3, 5, 4), (1, 1, 1, 1)]


@pytest.fixture(params=["serial", "parallel"])
def numba_path(request, monkeypatch):
    """Run numba kernels on the calling thread (small work) or split across threads."""
    if request.param == "parallel":
        monkeypatch.setattr(numba_common, "PARALLEL_MIN_WORK", 0)
    return request.param


def _input(rng, shape, dtype):
    """Normal values with exact zeros (both signs) wherever there is room."""
    x = rng.standard_normal(shape).astype(dtype)
    flat = x.reshape(-1)
    flat[: flat.size // 3] = 0.0
    flat[flat.size // 3: flat.size // 2] = -0.0
    rng.shuffle(flat)
    return x


def _module_and_torch(backend, layer, torch_layer, x, dout):
    with use_backend(backend):
        out = layer(x.copy() if getattr(layer, "inplace", False) else x)
        dx = layer.backward(dout)
    t = to_torch(x, requires_grad=True)
    y = torch_layer(t * 1.0 if getattr(torch_layer, "inplace", False) else t)
    y.backward(torch.tensor(dout))
    return out, dx, y.detach().numpy(), t.grad.numpy()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("inplace", [False, True])
def test_relu_matches_torch(rng, backend, dtype, shape, inplace):
    x = _input(rng, shape, dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    out, dx, t_out, t_dx = _module_and_torch(backend, snn.ReLU(inplace), torch.nn.ReLU(inplace),
                                             x, dout)
    assert out.dtype == dtype and dx.dtype == dtype
    assert_close(out, t_out, dtype, "out")
    assert_close(dx, t_dx, dtype, "dx")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("slope,inplace",
                         [(0.01, False), (0.2, True), (-0.5, False), (0.0, False)])
def test_leaky_relu_matches_torch(rng, backend, dtype, shape, slope, inplace):
    x = _input(rng, shape, dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    out, dx, t_out, t_dx = _module_and_torch(
        backend, snn.LeakyReLU(slope, inplace), torch.nn.LeakyReLU(slope, inplace), x, dout)
    assert out.dtype == dtype and dx.dtype == dtype
    assert_close(out, t_out, dtype, "out")
    assert_close(dx, t_dx, dtype, "dx")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_at_zero_and_nan_follow_torch(backend):
    # ReLU: 0 at exactly 0 (either sign); LeakyReLU: the slope at 0; NaN as torch passes it
    x = np.array([0.0, -0.0, np.nan, 1.0, -1.0, np.inf, -np.inf])
    dout = np.arange(1.0, 8.0)
    for ours, theirs in [(snn.ReLU(), torch.nn.ReLU()),
                         (snn.LeakyReLU(0.1), torch.nn.LeakyReLU(0.1))]:
        out, dx, t_out, t_dx = _module_and_torch(backend, ours, theirs, x, dout)
        np.testing.assert_array_equal(out, t_out)
        np.testing.assert_array_equal(dx, t_dx)


@pytest.mark.parametrize("layer", [snn.ReLU, snn.LeakyReLU])
def test_inplace_writes_into_input(rng, layer):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    expected = layer()(x)
    out = layer(inplace=True)(x)
    assert out is x
    np.testing.assert_array_equal(x, expected)


def test_leaky_relu_inplace_negative_slope_backward_raises(rng):
    layer = snn.LeakyReLU(-0.5, inplace=True)
    out = layer(rng.standard_normal((2, 3)))
    with pytest.raises(RuntimeError, match="negative slope"):
        layer.backward(np.ones_like(out))


@pytest.mark.parametrize("name,args", [("relu", ()), ("leaky_relu", (0.03,))])
@pytest.mark.parametrize("dtype", DTYPES)
def test_numba_matches_numpy(numba_path, rng, name, args, dtype):
    x = _input(rng, (4, 5, 6), dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    results = []
    for b in BACKENDS:
        out, cache = getattr(ops(b), f"{name}_forward")(x, *args)
        results.append((out, getattr(ops(b), f"{name}_backward")(dout, cache)))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name,args", [("relu", ()), ("leaky_relu", (0.03,))])
def test_numpy_op_directional_gradient(rng, name, args):
    # values well away from 0 so that the step never crosses the kink
    x = rng.standard_normal((3, 4, 5))
    x += np.sign(x) * 0.1
    v = rng.standard_normal(x.shape)
    forward = getattr(ops("numpy"), f"{name}_forward")
    out, cache = forward(x, *args)
    dout = rng.standard_normal(out.shape)
    dx = getattr(ops("numpy"), f"{name}_backward")(dout, cache)
    eps = 1e-6
    numeric = np.sum(dout * (forward(x + eps * v, *args)[0] - forward(x - eps * v, *args)[0]))
    numeric /= 2 * eps
    assert abs(numeric - np.sum(dx * v)) <= 1e-7 * max(1.0, abs(numeric))


def test_repr_matches_torch():
    for ours, theirs in [(snn.ReLU(), torch.nn.ReLU()), (snn.ReLU(True), torch.nn.ReLU(True)),
                         (snn.LeakyReLU(), torch.nn.LeakyReLU()),
                         (snn.LeakyReLU(0.2, True), torch.nn.LeakyReLU(0.2, True))]:
        assert repr(ours) == repr(theirs)


def test_validation_errors():
    with pytest.raises(TypeError, match="ReLU: expected a float32 or float64"):
        snn.ReLU()(np.zeros(3, np.int32))
    with pytest.raises(RuntimeError, match="before forward"):
        snn.ReLU().backward(np.zeros(3))
    layer = snn.ReLU()
    layer(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"ReLU.backward: expected dout of shape \(2, 3\)"):
        layer.backward(np.zeros((3, 2)))


def test_array_likes_are_converted_and_dout_is_cast():
    # torch's autograd casts an incoming gradient to the output's dtype; so do the layers
    layer = snn.LeakyReLU(0.5)
    out = layer([[1.0, -2.0]])
    np.testing.assert_array_equal(out, [[1.0, -1.0]])
    x32 = np.array([1.0, -2.0], np.float32)
    layer(x32)
    dx = layer.backward(np.array([1.0, 1.0]))
    assert dx.dtype == np.float32
    np.testing.assert_array_equal(dx, [1.0, 0.5])
