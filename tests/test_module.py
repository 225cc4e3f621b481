"""The Module base and Sequential (naming, state dicts, modes, dtypes, gradient accumulation)
against torch.nn, plus Flatten."""
import numpy as np
import pytest
import torch

import scratchnet.nn as snn
from scratchnet.backend import ops, use_backend
from tests.helpers import BACKENDS, assert_close, to_torch


class Net(snn.Module):
    def __init__(self):
        super().__init__()
        self.features = snn.Sequential(snn.Flatten(), snn.Linear(12, 8), snn.ReLU(),
                                       snn.Dropout(0.5))
        self.head = snn.Sequential(snn.Linear(8, 6), snn.LeakyReLU(0.1),
                                   snn.Linear(6, 3, bias=False))
        self.out = snn.LogSoftmax(dim=1)

    def forward(self, x):
        return self.out(self.head(self.features(x)))

    def backward(self, dout):
        return self.features.backward(self.head.backward(self.out.backward(dout)))


class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8),
                                            torch.nn.ReLU(), torch.nn.Dropout(0.5))
        self.head = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.LeakyReLU(0.1),
                                        torch.nn.Linear(6, 3, bias=False))
        self.out = torch.nn.LogSoftmax(dim=1)

    def forward(self, x):
        return self.out(self.head(self.features(x)))


def _twins(dtype=np.float64):
    """Net and TorchNet holding torch's initial weights, loaded through load_state_dict."""
    theirs = TorchNet().to(torch.float64 if dtype == np.float64 else torch.float32)
    ours = Net().to(dtype)
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    return ours, theirs


def test_names_match_torch():
    ours, theirs = Net(), TorchNet()
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    for (_, p), (_, tp) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert p.shape == tuple(tp.shape)
    assert [type(m).__name__ for m in ours.features] == [type(m).__name__ for m in theirs.features]


def test_sequential_naming_indexing_and_repr():
    layers = [snn.Linear(4, 3), snn.ReLU(), snn.Linear(3, 2)]
    seq = snn.Sequential(*layers)
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    assert list(seq._modules) == ["0", "1", "2"]
    assert len(seq) == 3 and seq[1] is layers[1] and list(seq) == layers
    assert list(seq.state_dict()) == list(theirs.state_dict())
    assert repr(seq) == repr(theirs)
    assert repr(Net()).split("\n")[1:] == repr(TorchNet()).split("\n")[1:]
    with pytest.raises(TypeError, match="Sequential: argument 1"):
        snn.Sequential(snn.ReLU(), lambda x: x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_backward_and_accumulation_match_torch(rng, backend):
    ours, theirs = _twins()
    ours.eval()
    theirs.eval()
    xs = [rng.standard_normal((5, 3, 2, 2)) for _ in range(2)]
    douts = [rng.standard_normal((5, 3)) for _ in range(2)]
    with use_backend(backend):
        for i, (x, dout) in enumerate(zip(xs, douts)):
            out = ours(x)
            dx = ours.backward(dout)
            t = to_torch(x, requires_grad=True)
            y = theirs(t)
            y.backward(torch.tensor(dout))
            assert_close(out, y, np.float64, f"out {i}")
            assert_close(dx, t.grad, np.float64, f"dx {i}")
            # the second pass adds into the gradients of the first, as torch's does
            for (name, p), (_, tp) in zip(ours.named_parameters(), theirs.named_parameters()):
                assert_close(p.grad, tp.grad, np.float64, f"{name}.grad after pass {i + 1}")


def test_load_state_dict_errors_and_casting():
    ours = Net()
    state = ours.state_dict()
    missing = dict(state)
    del missing["head.0.bias"]
    with pytest.raises(KeyError, match=r"missing keys \['head.0.bias'\]"):
        ours.load_state_dict(missing)
    extra = dict(state, **{"head.2.bias": np.zeros(3, np.float32)})
    with pytest.raises(KeyError, match=r"unexpected keys \['head.2.bias'\]"):
        ours.load_state_dict(extra)
    wrong = dict(state, **{"features.1.weight": np.zeros((8, 11), np.float32)})
    with pytest.raises(ValueError,
                       match=r"features.1.weight: expected shape \(8, 12\), got \(8, 11\)"):
        ours.load_state_dict(wrong)
    # a failed load changes nothing
    for name, value in ours.state_dict().items():
        np.testing.assert_array_equal(value, state[name])

    # non-strict: loads what matches and reports the rest, as torch does
    donor = {k: np.full(v.shape, 0.25) for k, v in state.items() if k != "head.0.bias"}
    donor["unused"] = np.zeros(1)
    missing_keys, unexpected_keys = ours.load_state_dict(donor, strict=False)
    assert missing_keys == ["head.0.bias"] and unexpected_keys == ["unused"]
    np.testing.assert_array_equal(ours.head[0].bias.data, state["head.0.bias"])

    # float64 arrays are cast to the parameters' float32, and copied, not aliased
    source = {k: np.full(v.shape, 1 / 3) for k, v in state.items()}
    ours.load_state_dict(source)
    for name, p in ours.named_parameters():
        assert p.data.dtype == np.float32
        np.testing.assert_array_equal(p.data, np.float32(1 / 3))
    source["head.0.bias"][...] = 7.0
    assert ours.head[0].bias.data[0] == np.float32(1 / 3)
    # and state_dict hands out copies
    ours.state_dict()["head.0.bias"][...] = 9.0
    assert ours.head[0].bias.data[0] == np.float32(1 / 3)


def test_train_eval_propagate(rng):
    ours = Net()
    assert all(m.training for m in ours.modules())
    assert ours.eval() is ours
    assert not any(m.training for m in ours.modules())
    x = rng.standard_normal((4, 12)).astype(np.float32)
    dropout = ours.features[3]
    np.testing.assert_array_equal(dropout(x), x)
    assert ours.train() is ours
    assert all(m.training for m in ours.modules())
    assert (dropout(x) == 0).any()
    ours.train(False)
    assert not any(m.training for m in ours.modules())


def test_zero_grad(rng):
    ours = Net().eval()
    out = ours(rng.standard_normal((2, 12)).astype(np.float32))
    ours.backward(np.ones_like(out))
    assert all(p.grad is not None for p in ours.parameters())
    ours.zero_grad(set_to_none=False)
    for p in ours.parameters():
        assert p.grad is not None and not p.grad.any()
    ours.zero_grad()
    assert all(p.grad is None for p in ours.parameters())


def test_dtype_moves(rng):
    ours = Net().eval()
    x32 = rng.standard_normal((2, 12)).astype(np.float32)
    ours.backward(ours(x32))
    assert ours.to(np.float64) is ours
    assert ours.dtype == np.float64
    for p in ours.parameters():
        assert p.data.dtype == np.float64 and p.grad.dtype == np.float64
    out = ours(x32.astype(np.float64))
    assert out.dtype == np.float64
    with pytest.raises(TypeError,
                       match="Linear: input dtype float32 does not match weight dtype float64"):
        ours(x32)
    assert ours.float() is ours and ours.dtype == np.float32
    assert all(p.data.dtype == np.float32 for p in ours.parameters())
    assert ours.double().dtype == np.float64
    with pytest.raises(TypeError, match="float32 or float64"):
        ours.to(np.int32)
    assert snn.ReLU().dtype == np.float32


def test_module_requires_super_init():
    class Broken(snn.Module):
        def __init__(self):
            self.layer = snn.ReLU()

    with pytest.raises(AttributeError, match="super"):
        Broken()


@pytest.mark.parametrize("shape,start,end", [((2, 3, 4, 5), 1, -1), ((2, 3, 4, 5), 0, -1),
                                             ((2, 3, 4, 5), 1, 2), ((2, 3, 4, 5), -2, -1),
                                             ((0, 3, 4), 1, -1), ((3, 0, 2), 1, -1),
                                             ((5,), 0, -1), ((2, 3), 1, 1), ((), 0, -1)])
def test_flatten_matches_torch(rng, shape, start, end):
    x = rng.standard_normal(shape)
    layer = snn.Flatten(start, end)
    out = layer(x)
    expected = torch.nn.Flatten(start, end)(to_torch(x)).numpy()
    assert out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)
    dout = rng.standard_normal(out.shape)
    np.testing.assert_array_equal(layer.backward(dout), dout.reshape(shape))


def test_flatten_repr_and_validation():
    assert repr(snn.Flatten()) == repr(torch.nn.Flatten())
    assert repr(snn.Flatten(0, 2)) == repr(torch.nn.Flatten(0, 2))
    with pytest.raises(IndexError, match="start_dim=1 is out of range for a 1-d input"):
        snn.Flatten()(np.zeros(3))
    with pytest.raises(ValueError, match="comes after"):
        snn.Flatten(2, 1)(np.zeros((2, 3, 4)))
    with pytest.raises(RuntimeError, match="before forward"):
        snn.Flatten().backward(np.zeros((2, 3)))


@pytest.mark.parametrize("make,shape,op", [
    (lambda: snn.ReLU(), (3, 4), "relu"), (lambda: snn.LeakyReLU(0.2), (3, 4), "leaky_relu"),
    (lambda: snn.MaxPool2d(2), (2, 3, 4, 4), "maxpool2d"),
    (lambda: snn.Linear(4, 3), (5, 4), "linear"), (lambda: snn.Dropout(0.5), (3, 4), "dropout"),
    (lambda: snn.Softmax(1), (3, 4), "softmax"), (lambda: snn.LogSoftmax(0), (3, 4), "log_softmax"),
])
def test_backward_uses_the_backend_of_forward(rng, monkeypatch, make, shape, op):
    # a cache belongs to the backend that made it: switching backends between forward and
    # backward must not hand it to the other backend's op
    def refuse(*args):
        raise AssertionError(f"numpy {op}_backward called with a numba cache")

    monkeypatch.setattr(ops("numpy"), f"{op}_backward", refuse)
    layer = make().double()
    with use_backend("numba"):
        out = layer(rng.standard_normal(shape))
    with use_backend("numpy"):
        layer.backward(np.ones_like(out))
