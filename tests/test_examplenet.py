"""examplenet and pytorch/examples' mnist/main.py: its saved weights load, its recipe trains alike.

The example trains ``Net`` with Adadelta(lr=1.0) and StepLR(step_size=1, gamma=0.7) and, with
``--save-model``, writes ``torch.save(model.state_dict(), "mnist_cnn.pt")``.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import scratchnet as sn
from reference import convert
from reference import models as ref_models
from scratchnet import checkpoint
from tests.helpers import assert_close, break_ties


@pytest.fixture(scope="module")
def mnist():
    images, labels = sn.data.load_mnist("test")
    x = sn.data.normalize(images[:200], 0.1307, 0.3081, input_shape=(1, 28, 28))
    return x, labels[:200]


def _train_torch_twin(x, y, steps=4):
    """The example's Net after a few of its own training steps (so no weight is at its init)."""
    torch.manual_seed(1)
    net = ref_models.ExampleNet()
    opt = torch.optim.Adadelta(net.parameters(), lr=1.0)
    net.train()
    for k in range(steps):
        xb, yb = torch.tensor(x[k * 32:(k + 1) * 32]), torch.tensor(y[k * 32:(k + 1) * 32])
        opt.zero_grad()
        TF.nll_loss(net(xb), yb).backward()
        opt.step()
    return net.eval()


def test_mnist_cnn_pt_from_the_example_loads_into_examplenet(tmp_path, mnist):
    x, y = mnist
    net = _train_torch_twin(x, y)
    path = tmp_path / "mnist_cnn.pt"
    torch.save(net.state_dict(), path)  # exactly what the example's --save-model does

    state = checkpoint.load_torch_state_dict(path)
    assert checkpoint.infer_model(state) == "examplenet"
    model = sn.models.build("examplenet")
    checkpoint.load_weights(model, state, path, "examplenet")
    out = model.eval()(x)
    with torch.no_grad():
        ref = net(torch.tensor(x)).numpy()
    assert_close(out, ref, np.float32, "log-probabilities")
    np.testing.assert_array_equal(out.argmax(1), ref.argmax(1))

    exported = tmp_path / "again.pt"   # and what scratchnet exports, the example's Net loads
    checkpoint.save_torch_state_dict(exported, model.state_dict())
    twin = ref_models.ExampleNet()
    twin.load_state_dict(torch.load(exported, weights_only=True))
    for key, value in twin.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), net.state_dict()[key].numpy())


def test_recipe_trajectory_matches_torch_float64(mnist):
    """Adadelta + StepLR per 'epoch' on examplenet, dropout off on both sides (the masks come
    from different generators): losses and final weights agree with torch."""
    x, y = mnist
    sn.manual_seed(0)
    model = sn.models.build("examplenet", dtype=np.float64).eval()
    twin = convert.copy_to_torch(model, ref_models.build("examplenet", dtype=torch.float64))
    twin.eval()
    opt = sn.optim.Adadelta(model.parameters(), lr=1.0)
    sched = sn.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    topt = torch.optim.Adadelta(twin.parameters(), lr=1.0, foreach=False)
    tsched = torch.optim.lr_scheduler.StepLR(topt, step_size=1, gamma=0.7)
    loss_fn = sn.nn.NLLLoss()
    losses, tlosses = [], []
    # noise so that no max-pool window ties (after two convs torch's float64 conv breaks
    # ties of MNIST's flat background by round-off; see tests/test_models.py)
    xs = break_ties(x.astype(np.float64), np.float32, amplitude=0.2).astype(np.float64)
    for epoch in range(3):
        for k in range(3):
            xb, yb = xs[k * 16:(k + 1) * 16], y[k * 16:(k + 1) * 16]
            loss = loss_fn(model(xb), yb)
            opt.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()
            losses.append(float(loss))
            tloss = TF.nll_loss(twin(torch.tensor(xb)), torch.tensor(yb))
            topt.zero_grad()
            tloss.backward()
            topt.step()
            tlosses.append(tloss.item())
        sched.step()
        tsched.step()
    assert sched.get_last_lr() == tsched.get_last_lr()
    assert tlosses[-1] < 0.8 * tlosses[0]  # it learns, so equal losses say something
    np.testing.assert_allclose(losses, tlosses, rtol=1e-9, atol=0)
    final = convert.state_dict_from_torch(twin.state_dict())
    for key, value in model.state_dict().items():
        np.testing.assert_allclose(value, final[key], rtol=1e-7, atol=1e-10, err_msg=key)
