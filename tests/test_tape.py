"""Models written the PyTorch way: forward once, backward replayed from the tape.

Each model is written twice, in scratchnet and in torch, line for line; outputs, the input
gradient and every parameter gradient must agree (float64 to 1e-10, float32 to 1e-5).
"""
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import scratchnet as sn
import scratchnet.nn as snn
import scratchnet.nn.functional as F
from scratchnet.backend import use_backend
from scratchnet.nn.module import backward_to_params
from tests.helpers import BACKENDS, DTYPES, TORCH_DTYPE, assert_close


class IssueNet(snn.Module):
    """The example of the issue that asked for this, verbatim."""

    def __init__(self):
        super().__init__()
        self.conv1 = sn.nn.Conv2d(1, 32, 3, 1)
        self.fc1 = sn.nn.Linear(5408, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        return F.log_softmax(self.fc1(sn.flatten(x, 1)), dim=1)


class TorchIssueNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 32, 3, 1)
        self.fc1 = torch.nn.Linear(5408, 10)

    def forward(self, x):
        x = TF.max_pool2d(TF.relu(self.conv1(x)), 2)
        return TF.log_softmax(self.fc1(torch.flatten(x, 1)), dim=1)


class SkipNet(snn.Module):
    """A skip connection (F.add), an array used twice, a layer called twice, a ModuleList."""

    def __init__(self):
        super().__init__()
        self.conv = snn.Conv2d(2, 2, 3, padding=1)
        self.blocks = snn.ModuleList([snn.Conv2d(2, 2, 3, padding=1) for _ in range(2)])
        self.fc = snn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        h = F.relu(self.conv(x))
        for block in self.blocks:
            h = F.add(h, F.leaky_relu(block(h), 0.2))   # h feeds the block and the sum
        h = F.add(self.conv(h), h, alpha=0.5)            # conv's weights used a second time
        h = F.max_pool2d(h, 2)
        return F.softmax(self.fc(sn.flatten(h, 1)), dim=1)


class TorchSkipNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)
        self.blocks = torch.nn.ModuleList([torch.nn.Conv2d(2, 2, 3, padding=1)
                                           for _ in range(2)])
        self.fc = torch.nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        h = TF.relu(self.conv(x))
        for block in self.blocks:
            h = torch.add(h, TF.leaky_relu(block(h), 0.2))
        h = torch.add(self.conv(h), h, alpha=0.5)
        h = TF.max_pool2d(h, 2)
        return TF.softmax(self.fc(torch.flatten(h, 1)), dim=1)


def _twins(cls, torch_cls, dtype):
    torch.manual_seed(0)
    theirs = torch_cls().to(TORCH_DTYPE[dtype])
    ours = cls().to(dtype)
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    return ours, theirs


def _compare(ours, theirs, x, dtype, backend):
    dout = np.random.default_rng(5).standard_normal(theirs(torch.tensor(x)).shape).astype(dtype)
    with use_backend(backend):
        out = ours(x)
        ours.zero_grad()
        dx = ours.backward(dout)
    tx = torch.tensor(x, requires_grad=True)
    tout = theirs(tx)
    tout.backward(torch.tensor(dout))
    assert_close(out, tout, dtype, "output")
    assert_close(dx, tx.grad, dtype, "d input")
    tparams = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert_close(p.grad, tparams[name].grad, dtype, f"grad {name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_issue_example_matches_torch(backend, dtype, rng):
    ours, theirs = _twins(IssueNet, TorchIssueNet, dtype)
    _compare(ours, theirs, rng.standard_normal((3, 1, 28, 28)).astype(dtype), dtype, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_skip_connections_and_shared_layers_match_torch(backend, dtype, rng):
    ours, theirs = _twins(SkipNet, TorchSkipNet, dtype)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    _compare(ours, theirs, rng.standard_normal((2, 2, 8, 8)).astype(dtype), dtype, backend)


@pytest.mark.parametrize("fused", [True, False])
def test_backward_equals_an_explicit_chain_of_the_same_ops(fused, rng):
    """The tape's backward is the hand-written chain of the same layers' backwards, exactly."""
    sn.manual_seed(0)
    model = IssueNet().to(np.float64)
    x = rng.standard_normal((2, 1, 28, 28))
    dout = rng.standard_normal((2, 10))
    with snn.fusion.disabled() if not fused else _nothing():
        model(x)
        model.zero_grad()
        dx = model.backward(dout)
    got = {n: p.grad.copy() for n, p in model.named_parameters()}
    relu, pool, flat, logsm = snn.ReLU(), snn.MaxPool2d(2), snn.Flatten(1), snn.LogSoftmax(1)
    logsm(model.fc1(flat(pool(relu(model.conv1(x))))))
    model.zero_grad()
    want_dx = model.conv1.backward(relu.backward(pool.backward(flat.backward(
        model.fc1.backward(logsm.backward(dout))))))
    np.testing.assert_allclose(dx, want_dx, rtol=1e-13, atol=1e-15)
    for n, p in model.named_parameters():
        np.testing.assert_allclose(got[n], p.grad, rtol=1e-13, atol=1e-15, err_msg=n)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_gradients_accumulate_across_backward_calls(rng):
    sn.manual_seed(0)
    model = IssueNet().to(np.float64)
    x, dout = rng.standard_normal((2, 1, 28, 28)), rng.standard_normal((2, 10))
    model(x)
    model.backward(dout)
    once = {n: p.grad.copy() for n, p in model.named_parameters()}
    model(x)
    model.backward(dout)
    for n, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * once[n], rtol=1e-14, err_msg=n)


class NumpyBetween(snn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = snn.Linear(4, 4)
        self.fc2 = snn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(self.fc1(x) * 2)   # NumPy arithmetic: not recorded


class NumpyBefore(snn.Module):
    def __init__(self):
        super().__init__()
        self.fc = snn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x.reshape(len(x), 4))  # preparing the input before the first op is fine


def test_numpy_arithmetic_between_layers_is_a_clear_error(rng):
    model = NumpyBetween()
    with pytest.raises(RuntimeError, match=r"NumpyBetween.forward: Linear received an array "
                                           r"that no recorded op produced .* NumPy arithmetic"):
        model(rng.standard_normal((3, 4)).astype(np.float32))


def test_numpy_before_the_first_op_gives_the_prepared_input_gradient(rng):
    model = NumpyBefore()
    x = rng.standard_normal((3, 2, 2)).astype(np.float32)
    out = model(x)
    dx = model.backward(np.ones_like(out))
    np.testing.assert_allclose(dx, (np.ones((3, 2)) @ model.fc.weight.data).reshape(3, 2, 2),
                               rtol=1e-6)


class LossNet(snn.Module):
    def __init__(self):
        super().__init__()
        self.fc = snn.Linear(5, 3)

    def forward(self, x, target):
        return F.cross_entropy(self.fc(x), target)


def test_a_0d_output_implies_gradient_one_and_other_outputs_need_dout(rng):
    model = LossNet().to(np.float64)
    x, t = rng.standard_normal((4, 5)), np.array([0, 2, 1, 1])
    twin = torch.nn.Linear(5, 3).double()
    twin.load_state_dict({k[3:]: torch.tensor(v) for k, v in model.state_dict().items()})
    tx = torch.tensor(x, requires_grad=True)
    TF.cross_entropy(twin(tx), torch.tensor(t)).backward()
    loss = model(x, t)
    assert loss.shape == ()
    assert_close(model.backward(), tx.grad, np.float64, "d input")
    assert_close(model.fc.weight.grad, twin.weight.grad, np.float64, "grad weight")
    with pytest.raises(ValueError, match=r"IssueNet.backward: dout is required for an output "
                                         r"of shape \(1, 10\)"):
        net = IssueNet()
        net(rng.standard_normal((1, 1, 28, 28)).astype(np.float32))
        net.backward()
    with pytest.raises(RuntimeError, match="IssueNet: backward called before forward"):
        IssueNet().backward(np.zeros((1, 10), np.float32))


class Spy(snn.Flatten):
    calls = 0

    def backward(self, dout):
        type(self).calls += 1
        return super().backward(dout)


class SpyNet(snn.Module):
    def __init__(self):
        super().__init__()
        self.flat = Spy()
        self.fc = snn.Linear(6, 2)

    def forward(self, x):
        return F.relu(self.fc(self.flat(x)))


def test_backward_to_params_skips_parameter_free_ops_before_the_first_parameter(rng):
    model = SpyNet().to(np.float64)
    x = rng.standard_normal((3, 2, 3))
    dout = rng.standard_normal((3, 2))
    model(x)
    model.backward(dout)
    full = {n: p.grad.copy() for n, p in model.named_parameters()}
    calls = Spy.calls
    model.zero_grad()
    model(x)
    assert backward_to_params(model, dout) is None
    assert Spy.calls == calls  # the Flatten before fc was not run backward
    for n, p in model.named_parameters():
        np.testing.assert_array_equal(p.grad, full[n])


class DropNet(snn.Module):
    def __init__(self):
        super().__init__()
        self.fc = snn.Linear(50, 50)
        self.drop = snn.Dropout(0.5)

    def forward(self, x):
        x = self.drop(self.fc(x))
        return F.dropout(x, 0.5, training=self.training)


def test_eval_reaches_every_layer_a_model_uses(rng):
    model = DropNet()
    x = rng.standard_normal((4, 50)).astype(np.float32)
    model.eval()
    np.testing.assert_array_equal(model(x), model.fc(x))
    model.train()
    assert (model(x) == 0).mean() > 0.5


def test_sequential_from_ordered_dict_module_list_and_traversal_match_torch():
    ours = snn.Sequential(OrderedDict([("conv", snn.Conv2d(1, 2, 3)), ("act", snn.ReLU()),
                                       ("blocks", snn.ModuleList([snn.Linear(2, 2)] * 2))]))
    theirs = torch.nn.Sequential(OrderedDict([
        ("conv", torch.nn.Conv2d(1, 2, 3)), ("act", torch.nn.ReLU()),
        ("blocks", torch.nn.ModuleList([torch.nn.Linear(2, 2)] * 2))]))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    assert [n for n, _ in ours.named_children()] == [n for n, _ in theirs.named_children()]
    assert [type(m).__name__ for m in ours.children()] == \
        [type(m).__name__ for m in theirs.children()]
    assert len(ours.blocks) == 2 and ours.blocks[0] is ours.blocks[1]
    assert isinstance(ours[0:2], snn.Sequential) and list(ours[0:2]._modules) == ["conv", "act"]
    with pytest.raises(TypeError, match="Sequential: module 'x' is int, not a Module"):
        snn.Sequential(OrderedDict([("x", 3)]))
    with pytest.raises(NotImplementedError, match="ModuleList has no forward"):
        snn.ModuleList([snn.ReLU()])(np.zeros(2))


def test_flatten_mirrors_torch_flatten(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    for args in ((), (1,), (1, 2), (0, -2)):
        np.testing.assert_array_equal(sn.flatten(x, *args), torch.flatten(torch.tensor(x), *args))
