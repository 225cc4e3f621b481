"""Fused ops and the fusion pass: fused == unfused, exactly, in both backends and dtypes."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import scratchnet as sn
import scratchnet.nn as snn
from scratchnet.backend import ops, use_backend
from scratchnet.nn import fusion
from tests.helpers import BACKENDS, DTYPES, assert_close, to_torch

# (x shape, w shape, stride, padding (t, b, l, r), dilation, groups, pool k, s, p, d, ceil)
CONV_POOL = [
    ((3, 1, 12, 12), (4, 1, 3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1,
     (2, 2), (2, 2), (0, 0), (1, 1), False),
    ((2, 4, 9, 8), (6, 2, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2,
     (3, 3), (2, 2), (1, 1), (1, 1), True),
    ((1, 3, 10, 9), (5, 3, 2, 3), (2, 1), (1, 0, 2, 1), (1, 2), 1,
     (2, 2), (1, 1), (0, 0), (1, 1), False),
    ((4, 3, 7, 7), (5, 3, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1,
     (3, 2), (2, 1), (1, 0), (1, 1), False),
    ((5, 2, 11, 10), (3, 2, 3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1,
     (2, 2), (2, 2), (0, 0), (2, 1), True),
    # MaxPool2d(2) on an odd size: the last row/column dropped (the 2×2 kernel) ...
    ((2, 3, 11, 11), (4, 3, 3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1,
     (2, 2), (2, 2), (0, 0), (1, 1), False),
    # ... or, with ceil_mode, a last window half outside (the general scan)
    ((2, 2, 10, 10), (3, 2, 2, 2), (1, 1), (0, 0, 0, 0), (1, 1), 1,
     (2, 2), (2, 2), (0, 0), (1, 1), True),
    # a small GEMM: 5 filters over 18 taps, in both dtypes
    ((2, 2, 12, 18), (5, 2, 3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1,
     (2, 2), (2, 2), (0, 0), (1, 1), False),
]


def _unfused(o, x, w, b, conv_args, pool_args):
    y, cc = o.conv2d_forward(x, w, b, *conv_args)
    r, rc = o.relu_forward(y)
    out, pc = o.maxpool2d_forward(r, *pool_args)

    def backward(dout):
        return o.conv2d_backward(o.relu_backward(o.maxpool2d_backward(dout, pc), rc), cc)
    return out, backward


def _arrays(rng, xs, ws, dtype, bias=True, nan=False):
    x = rng.standard_normal(xs).astype(dtype)
    if nan:
        x.flat[::7] = np.nan
    w = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype) if bias else None
    return x, w, b


def _equal(a, b):
    if a is None or b is None:
        assert a is None and b is None
        return
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(CONV_POOL)))
def test_conv_relu_maxpool_equals_unfused(backend, dtype, case, rng):
    xs, ws, stride, pad, dil, groups, k, s, p, d, ceil = CONV_POOL[case]
    o = ops(backend)
    x, w, b = _arrays(rng, xs, ws, dtype, bias=case != 2, nan=case == 4)
    conv_args, pool_args = (stride, pad, dil, groups), (k, s, p, d, ceil)
    out, cache = o.conv2d_relu_maxpool2d_forward(x, w, b, *conv_args, *pool_args)
    ref, ref_backward = _unfused(o, x, w, b, conv_args, pool_args)
    np.testing.assert_array_equal(out, ref)
    dout = rng.standard_normal(out.shape).astype(dtype)
    for got, want in zip(o.conv2d_relu_maxpool2d_backward(dout, cache), ref_backward(dout)):
        _equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(CONV_POOL)))
def test_fused_numba_matches_torch(dtype, case, rng):
    """Both orders torch runs: relu before and after the pool."""
    xs, ws, stride, pad, dil, groups, k, s, p, d, ceil = CONV_POOL[case]
    x, w, b = _arrays(rng, xs, ws, dtype)
    out, cache = ops("numba").conv2d_relu_maxpool2d_forward(
        x, w, b, stride, pad, dil, groups, k, s, p, d, ceil)
    dout = rng.standard_normal(out.shape).astype(dtype)
    grads = ops("numba").conv2d_relu_maxpool2d_backward(dout, cache)
    for relu_first in (True, False):
        tx, tw, tb = (to_torch(a, requires_grad=True) for a in (x, w, b))
        y = F.conv2d(F.pad(tx, (pad[2], pad[3], pad[0], pad[1])), tw, tb, stride, 0, dil, groups)
        if relu_first:
            y = F.max_pool2d(F.relu(y), k, s, p, d, ceil)
        else:
            y = F.relu(F.max_pool2d(y, k, s, p, d, ceil))
        y.backward(torch.tensor(dout))
        assert_close(out, y, dtype, "out")
        for name, got, t in zip(("dx", "dw", "db"), grads, (tx, tw, tb)):
            assert_close(got, t.grad, dtype, name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_relu_and_linear_relu_equal_unfused(backend, dtype, rng):
    o = ops(backend)
    x, w, b = _arrays(rng, (3, 4, 8, 7), (6, 2, 3, 3), dtype)
    args = ((1, 2), (1, 0, 2, 1), (1, 1), 2)
    out, cache = o.conv2d_relu_forward(x, w, b, *args)
    y, cc = o.conv2d_forward(x, w, b, *args)
    r, rc = o.relu_forward(y)
    np.testing.assert_array_equal(out, r)
    dout = rng.standard_normal(out.shape).astype(dtype)
    for got, want in zip(o.conv2d_relu_backward(dout, cache),
                         o.conv2d_backward(o.relu_backward(dout, rc), cc)):
        _equal(got, want)
    for bias in (True, False):
        x, w, b = _arrays(rng, (33, 20), (7, 20), dtype, bias=bias)
        out, cache = o.linear_relu_forward(x, w, b)
        y, lc = o.linear_forward(x, w, b)
        r, rc = o.relu_forward(y)
        np.testing.assert_array_equal(out, r)
        dout = rng.standard_normal(out.shape).astype(dtype)
        for got, want in zip(o.linear_relu_backward(dout, cache),
                             o.linear_backward(o.relu_backward(dout, rc), lc)):
            _equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("slope", [0.01, 0.0, -0.5, 2.0])
def test_linear_leaky_relu_equals_unfused(backend, dtype, slope, rng):
    """linear + LeakyReLU fused == the two ops, bitwise, with and without bias and input
    gradient, for slopes of either sign (the backward reads the pre-activation, not the
    output), on mlp128's first-layer shape and an odd one, with a 0 pre-activation."""
    o = ops(backend)
    for shape, bias in (((32, 784), True), ((5, 70), False)):
        x, w, b = _arrays(rng, shape, (7, shape[1]), dtype, bias=bias)
        x[0] = 0  # row 0 of the output is the bias (or 0): LeakyReLU's gradient at 0
        out, cache = o.linear_leaky_relu_forward(x, w, b, slope)
        y, lc = o.linear_forward(x, w, b)
        r, rc = o.leaky_relu_forward(y, slope)
        np.testing.assert_array_equal(out, r)
        dout = rng.standard_normal(out.shape).astype(dtype)
        for input_grad in (True, False):
            got = o.linear_leaky_relu_backward(dout, cache, input_grad)
            want = o.linear_backward(o.leaky_relu_backward(dout, rc), lc, input_grad)
            for g, wt in zip(got, want):
                _equal(g, wt)


def _net(dtype):
    sn.manual_seed(3)
    return snn.Sequential(
        snn.Conv2d(2, 4, 3, padding=1, dtype=dtype), snn.ReLU(), snn.MaxPool2d(2),
        snn.Conv2d(4, 6, 3, dtype=dtype), snn.MaxPool2d(2, 1), snn.ReLU(),
        snn.Conv2d(6, 5, 1, dtype=dtype), snn.ReLU(),
        snn.Flatten(), snn.Linear(5, 8).to(dtype), snn.ReLU(),
        snn.Linear(8, 3).to(dtype))


def _ops(model):
    """The names of the ops the model's last forward recorded (fused steps included)."""
    return [type(e.op).__name__ for e in model.__dict__["_tape"].entries]


def _run(model, x, dout_seed=0):
    model.zero_grad()
    out = model(x)
    dout = np.random.default_rng(dout_seed).standard_normal(out.shape).astype(out.dtype)
    dx = model.backward(dout)
    return out, dx, [p.grad.copy() for p in model.parameters()]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 3])
def test_sequential_fused_equals_unfused(backend, dtype, batch, rng):
    model = _net(dtype)
    x = rng.standard_normal((batch, 2, 9, 9)).astype(dtype)
    with use_backend(backend):
        fused = _run(model, x)
        steps = model.__dict__["_last_steps"]
        assert [type(s).__name__ for s in steps] == [
            "_ConvReluPool", "_ConvReluPool", "_ConvRelu", "Flatten", "_LinearRelu", "Linear"]
        with fusion.disabled():
            plain = _run(model, x)
            assert model.__dict__["_last_steps"] == list(model)
    for a, b in zip(fused[:2], plain[:2]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(fused[2], plain[2]):
        np.testing.assert_array_equal(a, b)
    assert list(model.state_dict()) == list(_net(dtype).state_dict())


@pytest.mark.parametrize("backend", BACKENDS)
def test_fallbacks_unbatched_empty_and_errors(backend, rng):
    model = _net(np.float32)
    with use_backend(backend):
        convs = snn.Sequential(*list(model)[:8])  # unbatched input: no Flatten
        x = rng.standard_normal((2, 9, 9)).astype(np.float32)
        out, dx, grads = _run(convs, x)
        with fusion.disabled():
            ref = _run(convs, x)
        np.testing.assert_array_equal(out, ref[0])
        np.testing.assert_array_equal(dx, ref[1])
        empty = model(np.zeros((0, 2, 9, 9), np.float32))
        assert empty.shape == (0, 3)
        assert model.backward(np.zeros((0, 3), np.float32)).shape == (0, 2, 9, 9)
        with pytest.raises(ValueError, match="Conv2d: .*expected input .* to have 2 channels"):
            model(np.zeros((1, 3, 9, 9), np.float32))
        with pytest.raises(ValueError, match="MaxPool2d: input of shape .* is too small"):
            snn.Sequential(snn.Conv2d(1, 2, 3), snn.ReLU(), snn.MaxPool2d(4))(
                np.zeros((2, 1, 5, 5), np.float32))
        model(rng.standard_normal((2, 2, 9, 9)).astype(np.float32))
        with pytest.raises(ValueError, match="expected dout of shape"):
            model.backward(np.zeros((2, 4), np.float32))


@pytest.mark.parametrize("name, fused", [
    ("lenet", ["_ConvReluPool", "_ConvReluPool", "Flatten", "_LinearRelu", "Linear",
               "LogSoftmax"]),
    ("widecnn", ["_ConvReluPool", "_ConvReluPool", "Flatten", "_LinearRelu", "Dropout",
                 "_LinearRelu", "Dropout", "Linear", "LogSoftmax"]),
    ("examplenet", ["_ConvRelu", "_ConvReluPool", "Dropout", "Flatten", "_LinearRelu",
                    "Dropout", "Linear", "LogSoftmax"]),
])
def test_functional_models_fuse_and_switch(name, fused, rng):
    """Models written with F.* calls in forward still run their conv/linear runs fused."""
    model = sn.models.build(name)
    x = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
    model(x)
    assert _ops(model) == fused
    fusion.set_enabled(False)
    try:
        model(x)
        assert not any(op.startswith("_") for op in _ops(model))
    finally:
        fusion.set_enabled(True)
    assert fusion.is_enabled()


@pytest.mark.parametrize("backend", BACKENDS)
def test_runs_cut_short_and_deferred_outputs_read_by_numpy(backend, rng):
    """A deferred output read by NumPy (then not fused), a layer called twice, a conv-pool
    with no ReLU after it: each equals the unfused computation, gradients included."""
    F = snn.functional

    class Net(snn.Module):
        def __init__(self):
            super().__init__()
            self.conv = snn.Conv2d(1, 3, 3, dtype=np.float64)
            self.fc = snn.Linear(3 * 3 * 3, 2).to(np.float64)

        def forward(self, x):
            h = self.conv(x)
            self.seen_shape = h.shape          # NumPy attribute access on a deferred output
            a = F.relu(h)                      # h already ran: this ReLU runs on its own
            b = F.max_pool2d(self.conv(x), 2)  # the conv again; pool, then no ReLU: cut short
            s = F.add(F.max_pool2d(a, 2), b)
            return self.fc(sn.flatten(s, 1))

    sn.manual_seed(1)
    model = Net()
    x = rng.standard_normal((2, 1, 8, 8))
    with use_backend(backend):
        fused = _run(model, x)
        with fusion.disabled():
            plain = _run(model, x)
    assert model.seen_shape == (2, 3, 6, 6)
    for a, b in zip(fused[:2], plain[:2]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    for a, b in zip(fused[2], plain[2]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mlp128_fuses_linear_leaky_relu(backend, dtype, rng):
    """mlp128's Linear-LeakyReLU runs as one step, and the model computes bitwise what it
    computes unfused (outputs, input gradient, every parameter gradient)."""
    sn.manual_seed(0)
    model = sn.models.build("mlp128", dtype=dtype)
    x = rng.random((6, 784)).astype(dtype)
    with use_backend(backend):
        fused = _run(model, x)
        assert [type(s).__name__ for s in model.__dict__["_last_steps"]] == [
            "_LinearLeakyRelu", "Linear"]
        with fusion.disabled():
            plain = _run(model, x)
    for a, b in zip(fused[:2], plain[:2]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(fused[2], plain[2]):
        np.testing.assert_array_equal(a, b)
