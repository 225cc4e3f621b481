"""Every model against its torch twin: forward and every parameter gradient on a real MNIST batch."""
import numpy as np
import pytest
import torch

import scratchnet as sn
from reference import convert
from reference import models as ref_models
from tests.helpers import BACKENDS, TORCH_DTYPE, WEIGHT_SEED, assert_close, break_ties

MODEL_NAMES = sn.models.names()
# two-headed models have their own parity tests in test_multidigit.py
SINGLE_HEAD = [n for n in MODEL_NAMES if sn.models.OUTPUTS[n] != "two_logits"]
# Models whose first max-pool follows two convolutions: on MNIST's constant background torch's
# float64 conv gives equal windows different last bits by position (its vectorised interior and
# edges round differently), so even float64 ties are broken by round-off and need the noise;
# and float32 needs more of it (at 0.05 torch float32 and torch float64 differ by 3e-2 in dx).
TIES_EVEN_IN_FLOAT64 = {"examplenet": 0.2}


@pytest.fixture(scope="module")
def mnist_batch():
    images, labels = sn.data.load_mnist("test")
    return images[:16], labels[:16]


def shaped_input(model, images, dtype):
    """MNIST uint8 images -> the model's declared input shape, normalised like the tutorials."""
    x = (images.astype(np.float64) / 255.0 - 0.1307) / 0.3081
    return x.reshape((len(images),) + tuple(model.input_shape)).astype(dtype)


def twins(name, dtype):
    """A scratchnet model and its torch twin holding the same weights, in eval mode."""
    sn.manual_seed(WEIGHT_SEED)
    model = sn.models.build(name, dtype=dtype)
    twin = ref_models.build(name, dtype=TORCH_DTYPE[dtype])
    convert.copy_to_torch(model, twin)
    return model.eval(), twin.eval()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_state_dict_keys_equal_torch(name):
    model = sn.models.build(name)
    twin = ref_models.build(name)
    assert list(model.state_dict()) == list(twin.state_dict())
    for key, value in model.state_dict().items():
        assert value.shape == tuple(twin.state_dict()[key].shape), key
        assert value.dtype == np.float32


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", SINGLE_HEAD)
def test_forward_and_gradients_match_torch(name, dtype, backend, mnist_batch):
    images, labels = mnist_batch
    model, twin = twins(name, dtype)
    # float32: exact max-pool ties in the background would be broken by round-off (helpers)
    x = shaped_input(model, images, np.float64)
    if name in TIES_EVEN_IN_FLOAT64:
        x = break_ties(x, np.float32, amplitude=TIES_EVEN_IN_FLOAT64[name]).astype(dtype)
    else:
        x = break_ties(x, dtype)
    with sn.use_backend(backend):
        out = model(x)
        loss_fn = sn.nn.NLLLoss() if sn.models.OUTPUTS[name] == "log_probs" \
            else sn.nn.CrossEntropyLoss()
        loss = loss_fn(out, labels)
        model.zero_grad()
        dx = model.backward(loss_fn.backward())

    tx = torch.tensor(x, requires_grad=True)
    tout = twin(tx)
    tloss_fn = torch.nn.NLLLoss() if sn.models.OUTPUTS[name] == "log_probs" \
        else torch.nn.CrossEntropyLoss()
    tloss = tloss_fn(tout, torch.tensor(labels))
    tloss.backward()

    assert_close(out, tout, dtype, "output")
    assert_close(loss, tloss, dtype, "loss")
    assert_close(dx, tx.grad, dtype, "d input")
    torch_params = dict(twin.named_parameters())
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert_close(p.grad, torch_params[pname].grad, dtype, f"grad {pname}")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_weights_move_both_ways(name):
    model = sn.models.build(name, dtype=np.float64)
    twin = ref_models.build(name, dtype=torch.float64)
    convert.copy_from_torch(twin, model)          # torch's own random init -> scratchnet
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, twin.state_dict()[key].numpy())
    other = sn.models.build(name, dtype=np.float32)
    convert.copy_to_torch(other, twin)            # scratchnet -> torch (cast to float64)
    for key, value in other.state_dict().items():
        np.testing.assert_array_equal(value.astype(np.float64), twin.state_dict()[key].numpy())


def test_default_init_follows_torch_bounds():
    sn.manual_seed(0)
    model = sn.models.build("digitcnn")
    w = model.conv_layers[3].weight.data          # fan_in = 32 * 3 * 3
    bound = 1 / np.sqrt(32 * 9)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert abs(float(w.std()) - bound / np.sqrt(3)) < 0.05 * bound
    b = model.fc_layers[1].bias.data              # fan_in = 1600
    assert np.abs(b).max() <= 1 / np.sqrt(1600)


def test_same_seed_same_weights():
    sn.manual_seed(7)
    a = sn.models.build("lenet").state_dict()
    sn.manual_seed(7)
    b = sn.models.build("lenet").state_dict()
    sn.manual_seed(8)
    c = sn.models.build("lenet").state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["conv1.weight"], c["conv1.weight"])


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        sn.models.build("resnet")
