"""Skipping the input gradient (``input_grad=False``).

A training loop needs only parameter gradients (torch never computes the gradient of an input
that does not require grad), so ops, layers and models can skip dx. These tests check that the
parameter gradients are exactly those of the full backward pass, that dx is None, and that
parameter-free steps in front of the first weighted layer are not run at all.
"""
import numpy as np
import pytest

import scratchnet.nn as snn
from scratchnet.backend import ops, use_backend
from scratchnet.models import OUTPUTS, build
from scratchnet.nn.module import backward_to_params
from tests.helpers import BACKENDS, DTYPES

# (x shape, w shape, stride, padding (t, b, l, r), dilation, groups): a plain 3×3, a padded
# strided grouped one, a 1×1 and a wide grouped one
CONVS = [
    ((3, 1, 10, 9), (4, 1, 3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ((2, 4, 9, 8), (6, 2, 3, 2), (2, 1), (1, 1, 2, 0), (1, 2), 2),
    ((4, 3, 7, 7), (5, 3, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ((2, 80, 12, 12), (4, 40, 5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 2),
]
POOL = ((2, 2), (2, 2), (0, 0), (1, 1), False)


def _conv_arrays(rng, case, dtype):
    xs, ws, stride, pad, dil, groups = CONVS[case]
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    return x, w, b, (stride, pad, dil, groups)


def _same_param_grads(full, skipped):
    dx_full, dw, db = full
    dx, dw_s, db_s = skipped
    assert dx_full is not None and dx is None
    np.testing.assert_array_equal(dw_s, dw)
    np.testing.assert_array_equal(db_s, db)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(CONVS)))
def test_conv_ops_skip_input_grad(backend, dtype, case, rng):
    o = ops(backend)
    x, w, b, conv_args = _conv_arrays(rng, case, dtype)
    out, cache = o.conv2d_forward(x, w, b, *conv_args)
    dout = rng.standard_normal(out.shape).astype(dtype)
    _same_param_grads(o.conv2d_backward(dout, cache),
                      o.conv2d_backward(dout, cache, input_grad=False))

    out, cache = o.conv2d_relu_forward(x, w, b, *conv_args)
    _same_param_grads(o.conv2d_relu_backward(dout, cache),
                      o.conv2d_relu_backward(dout, cache, input_grad=False))

    out, cache = o.conv2d_relu_maxpool2d_forward(x, w, b, *conv_args, *POOL)
    dout = rng.standard_normal(out.shape).astype(dtype)
    _same_param_grads(o.conv2d_relu_maxpool2d_backward(dout, cache),
                      o.conv2d_relu_maxpool2d_backward(dout, cache, input_grad=False))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 5, 300])
def test_linear_ops_skip_input_grad(backend, dtype, n, rng):
    o = ops(backend)
    x = rng.standard_normal((n, 37)).astype(dtype)
    w = rng.standard_normal((11, 37)).astype(dtype)
    b = rng.standard_normal(11).astype(dtype)
    for forward, backward in ((o.linear_forward, o.linear_backward),
                              (o.linear_relu_forward, o.linear_relu_backward)):
        out, cache = forward(x, w, b)
        dout = rng.standard_normal(out.shape).astype(dtype)
        _same_param_grads(backward(dout, cache), backward(dout, cache, input_grad=False))


def _param_grads(model):
    return {k: p.grad.copy() for k, p in model.named_parameters()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_models_backward_to_params_equals_full_backward(backend, name, rng):
    """Every model: parameter gradients without dx are those of the full backward, exactly,
    in training mode (kept columns, dropout masks drawn once and replayed)."""
    model = build(name)
    x = rng.standard_normal((3,) + model.input_shape).astype(np.float32)
    with use_backend(backend):
        model.eval()  # no dropout: both passes see the same network
        out = model(x)
        dout = (tuple(rng.standard_normal(o.shape).astype(np.float32) for o in out)
                if isinstance(out, tuple) else rng.standard_normal(out.shape).astype(np.float32))
        dx = model.backward(dout)
        assert dx.shape == x.shape
        full = _param_grads(model)
        model.zero_grad()
        model(x)
        assert backward_to_params(model, dout) is None
        for k, p in model.named_parameters():
            np.testing.assert_array_equal(p.grad, full[k], err_msg=k)

        model.train()  # compare with fusion off (plain layers)
        model.zero_grad()
        model(x)
        backward_to_params(model, dout)
        trained = _param_grads(model)
        model.zero_grad()
        with snn.fusion.disabled():
            model.eval()
            model(x)
            model.backward(dout)
        if name in ("mitxcnn", "widecnn", "multicnn", "examplenet"):
            return  # dropout in training mode: the two passes differ by design
        for k, p in model.named_parameters():
            np.testing.assert_allclose(trained[k], p.grad, rtol=1e-5, atol=1e-6, err_msg=k)


class _Spy(snn.Flatten):
    """A parameter-free step that records whether its backward ran."""

    calls = 0

    def backward(self, dout):
        type(self).calls += 1
        return super().backward(dout)


class _NoSkip(snn.Module):
    """A user module that knows nothing of input_grad."""

    def __init__(self):
        super().__init__()
        self.lin = snn.Linear(4, 2)

    def forward(self, x):
        return self.lin(x)

    def backward(self, dout):
        return self.lin.backward(dout)


@pytest.mark.parametrize("backend", BACKENDS)
def test_containers_skip_leading_parameter_free_steps(backend, rng, monkeypatch):
    monkeypatch.setattr(_Spy, "calls", 0)
    spy = _Spy()
    model = snn.Sequential(spy, snn.Linear(12, 3), snn.ReLU(), snn.Linear(3, 2))
    x = rng.standard_normal((5, 3, 4)).astype(np.float32)
    dout = rng.standard_normal((5, 2)).astype(np.float32)
    with use_backend(backend):
        model(x)
        assert model.backward(dout).shape == x.shape
        assert _Spy.calls == 1
        full = _param_grads(model)
        model.zero_grad()
        model(x)
        assert model.backward(dout, input_grad=False) is None
        assert _Spy.calls == 1  # the Flatten in front of the first Linear did not run
        for k, p in model.named_parameters():
            np.testing.assert_array_equal(p.grad, full[k], err_msg=k)

        # a module without the keyword still works through backward_to_params
        user = _NoSkip()
        x2 = rng.standard_normal((3, 4)).astype(np.float32)
        user(x2)
        assert backward_to_params(user, np.ones((3, 2), np.float32)) is None
        assert user.lin.weight.grad is not None

        # a container with no parameters at all runs nothing and returns None
        empty = snn.Sequential(_Spy())
        empty(x)
        assert empty.backward(dout.reshape(5, 2), input_grad=False) is None
        assert _Spy.calls == 1
