"""scratchnet.nn.functional against torch.nn.functional: same names, arguments and numbers.

Each op runs inside a model's forward (so its gradient comes from the tape) and alone.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import scratchnet as sn
import scratchnet.nn as snn
import scratchnet.nn.functional as F
from tests.helpers import DTYPES, TORCH_DTYPE, assert_close


class Wrap(snn.Module):
    """A model whose forward is one functional call."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


W = np.random.default_rng(7).standard_normal((4, 3, 3, 3))
B = np.random.default_rng(8).standard_normal(4)
TARGET = np.array([2, 0, 4, 1])

CASES = {
    "relu": ((4, 6), lambda f, x: f.relu(x)),
    "leaky_relu": ((4, 6), lambda f, x: f.leaky_relu(x, 0.3)),
    "max_pool2d": ((2, 3, 7, 6), lambda f, x: f.max_pool2d(x, 3, 2, 1, ceil_mode=True)),
    "max_pool2d unbatched": ((3, 6, 6), lambda f, x: f.max_pool2d(x, (2, 3))),
    "dropout eval": ((4, 6), lambda f, x: f.dropout(x, 0.4, training=False)),
    "softmax": ((4, 6), lambda f, x: f.softmax(x, dim=0)),
    "log_softmax": ((2, 3, 4), lambda f, x: f.log_softmax(x, dim=-1)),
    "cross_entropy": ((4, 5), lambda f, x: f.cross_entropy(x, _t(f, TARGET), label_smoothing=0.1)),
    "nll_loss": ((4, 5), lambda f, x: f.nll_loss(x, _t(f, TARGET), reduction="sum")),
    "flatten": ((2, 3, 4), lambda f, x: (sn if f is F else torch).flatten(x, 1)),
    "add": ((4, 6), lambda f, x: (sn if f is F else torch).add(x, x * 1 if f is not F else x,
                                                                alpha=2.5)),
}


def _t(f, a):
    return a if f is F else torch.tensor(a)


def _cast(f, a, dtype):
    return a.astype(dtype) if f is F else torch.tensor(a, dtype=TORCH_DTYPE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CASES))
def test_functional_op_matches_torch(name, dtype, rng):
    shape, call = CASES[name]
    x = rng.standard_normal(shape).astype(dtype)
    model = Wrap(lambda v: call(F, v))
    out = model(x)
    np.testing.assert_array_equal(out, call(F, x))  # alone: the same numbers
    tx = torch.tensor(x, requires_grad=True)
    tout = call(TF, tx)
    dout = np.random.default_rng(3).standard_normal(np.shape(out)).astype(dtype)
    tout.backward(torch.tensor(dout))
    assert_close(out, tout, dtype, "output")
    assert_close(model.backward(dout), tx.grad, dtype, "d input")


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_and_linear_with_parameters_and_constants(dtype, rng):
    weight, bias = snn.Parameter(W.astype(dtype)), B.astype(dtype)   # bias: a constant
    lw_full = snn.Parameter(np.random.default_rng(2).standard_normal((5, 4 * 3 * 3))
                            .astype(dtype))

    def ours(x):
        h = F.conv2d(x, weight, bias, stride=2, padding=1, dilation=1)
        return F.linear(sn.flatten(h, 1), lw_full)

    model = Wrap(ours)
    x = rng.standard_normal((2, 3, 6, 5)).astype(dtype)
    out = model(x)
    dout = np.random.default_rng(4).standard_normal(out.shape).astype(dtype)
    dx = model.backward(dout)
    tw = torch.tensor(W, dtype=TORCH_DTYPE[dtype], requires_grad=True)
    tlw = torch.tensor(lw_full.data, requires_grad=True)
    tx = torch.tensor(x, requires_grad=True)
    th = TF.conv2d(tx, tw, torch.tensor(bias), stride=2, padding=1)
    tout = TF.linear(torch.flatten(th, 1), tlw)
    tout.backward(torch.tensor(dout))
    assert_close(out, tout, dtype, "output")
    assert_close(dx, tx.grad, dtype, "d input")
    assert_close(weight.grad, tw.grad, dtype, "conv weight grad")
    assert_close(lw_full.grad, tlw.grad, dtype, "linear weight grad")


def test_dropout_training_is_torchs_default_and_inverted(rng):
    sn.manual_seed(0)
    x = np.ones((200, 50), np.float32)
    out = F.dropout(x, 0.25)
    assert set(np.unique(out)) == {0.0, np.float32(1 / 0.75)}
    assert abs((out == 0).mean() - 0.25) < 0.02


def test_functional_argument_errors():
    with pytest.raises(ValueError, match="size_average and reduce are deprecated"):
        F.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), size_average=True)
    with pytest.raises(ValueError, match=r"conv2d: expected a float32/float64 weight of shape"):
        F.conv2d(np.zeros((1, 1, 4, 4)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"linear: expected bias of shape \(2,\), got \(3,\)"):
        F.linear(np.zeros((1, 4)), np.zeros((2, 4)), np.zeros(3))
