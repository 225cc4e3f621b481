"""Training trajectories: scratchnet and torch, same weights and batches, same losses step by step."""
import numpy as np
import pytest
import torch

import scratchnet as sn
from reference import convert
from reference import models as ref_models


@pytest.fixture(scope="module")
def batches():
    images, labels = sn.data.load_mnist("train")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(images))[: 30 * 64]
    x = ((images[order].astype(np.float64) / 255.0 - 0.5) / 0.5).reshape(30, 64, 1, 28, 28)
    return x, labels[order].reshape(30, 64)


def run_scratchnet(model, make_opt, xs, ys):
    opt = make_opt(model.parameters())
    loss_fn = sn.nn.CrossEntropyLoss()
    losses = []
    for x, y in zip(xs, ys):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()
        losses.append(float(loss))
    return np.array(losses)


def run_torch(twin, make_opt, xs, ys):
    opt = make_opt(twin.parameters())
    losses = []
    for x, y in zip(xs, ys):
        loss = torch.nn.functional.cross_entropy(twin(torch.tensor(x)), torch.tensor(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return np.array(losses)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_digitcnn_30_steps_match_torch_float64(batches, backend, optimizer):
    xs, ys = batches
    sn.manual_seed(0)
    model = sn.models.build("digitcnn", dtype=np.float64)
    twin = convert.copy_to_torch(model, ref_models.build("digitcnn", dtype=torch.float64))
    if optimizer == "adam":
        ours, theirs = (lambda p: sn.optim.Adam(p, lr=1e-3)), (lambda p: torch.optim.Adam(p, lr=1e-3))
    else:
        ours = lambda p: sn.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True)  # noqa: E731
        theirs = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True)  # noqa: E731
    with sn.use_backend(backend):
        our_losses = run_scratchnet(model, ours, xs, ys)
    torch_losses = run_torch(twin, theirs, xs, ys)
    # the model must really learn, or equal losses would prove little
    assert torch_losses[-5:].mean() < 0.7 * torch_losses[:5].mean()
    np.testing.assert_allclose(our_losses, torch_losses, rtol=1e-9, atol=0)
    final = convert.state_dict_from_torch(twin.state_dict())
    for key, value in model.state_dict().items():
        np.testing.assert_allclose(value, final[key], rtol=1e-8, atol=1e-10)
