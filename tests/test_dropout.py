"""Dropout: torch's arithmetic for a given mask, the mask's statistics, seeding and modes."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import scratchnet
import scratchnet.nn as snn
from scratchnet.backend import ops, use_backend
from scratchnet.backends.numba_backend import common as numba_common
from tests.helpers import BACKENDS, DTYPES, TORCH_DTYPE, assert_close, to_torch


@pytest.fixture(params=["serial", "parallel"])
def numba_path(request, monkeypatch):
    """Run numba kernels on the calling thread (small work) or split across threads."""
    if request.param == "parallel":
        monkeypatch.setattr(numba_common, "PARALLEL_MIN_WORK", 0)
    return request.param


def _train_step(backend, layer, x, dout):
    with use_backend(backend):
        out = layer(x)
        return out, layer.backward(dout)


def _torch_with_mask(x, keep, p, dout):
    """torch's CPU dropout with our mask as its noise: out = x·(mask/(1-p)), grad the same."""
    t = to_torch(x, requires_grad=True)
    noise = torch.tensor(keep).to(TORCH_DTYPE[x.dtype.type])
    noise.div_(1 - p)
    y = t * noise
    y.backward(torch.tensor(dout))
    return y.detach().numpy(), t.grad.numpy()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(0, 4), (1,), (3, 5, 7), (2, 3, 4, 5)])
def test_dropout_matches_torch_for_its_mask(rng, backend, dtype, p, shape):
    x = rng.standard_normal(shape).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    layer = snn.Dropout(p)
    out, dx = _train_step(backend, layer, x, dout)
    keep, _ = layer._cache
    # no kept element of a nonzero input is 0, so the output reveals the mask
    np.testing.assert_array_equal(keep, out != 0)
    t_out, t_dx = _torch_with_mask(x, keep, p, dout)
    assert out.dtype == dtype and dx.dtype == dtype
    assert_close(out, t_out, dtype, "out")
    assert_close(dx, t_dx, dtype, "dx")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", [0.2, 0.5, 0.75])
def test_train_mode_statistics(backend, p):
    scratchnet.manual_seed(7)
    x = np.ones((200, 500), np.float32)
    out, _ = _train_step(backend, snn.Dropout(p), x, x)
    kept = out != 0
    n = x.size
    # the kept fraction is Binomial(n, 1-p)/n: within 5 standard deviations
    assert abs(kept.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)
    np.testing.assert_allclose(out[kept], np.float32(1) / np.float32(1 - p), rtol=1e-7)
    # inverted dropout keeps the expectation
    assert abs(out.mean() - 1) < 5 * np.sqrt(p / (1 - p) / n)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_reuses_forward_mask(rng, backend):
    layer = snn.Dropout(0.5)
    x = rng.standard_normal((30, 40))
    with use_backend(backend):
        out = layer(x)
        dx1 = layer.backward(np.ones_like(x))
        dx2 = layer.backward(np.ones_like(x))  # no new draw between backward calls
    np.testing.assert_array_equal(dx1, dx2)
    np.testing.assert_array_equal(dx1 != 0, out != 0)
    np.testing.assert_array_equal(dx1[out != 0], 2.0)


def test_seeded_repeatability_across_backends_and_dtypes(rng):
    x = rng.standard_normal((8, 9, 10))
    masks = []
    for backend in BACKENDS:
        for dtype in DTYPES:
            scratchnet.manual_seed(123)
            layer = snn.Dropout(0.3)
            with use_backend(backend):
                first = layer(x.astype(dtype)) != 0
                second = layer(x.astype(dtype)) != 0
            masks.append((first, second))
    for first, second in masks[1:]:
        np.testing.assert_array_equal(first, masks[0][0])
        np.testing.assert_array_equal(second, masks[0][1])
    assert not np.array_equal(masks[0][0], masks[0][1])  # the generator moves on


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_mode_is_identity(rng, backend):
    layer = snn.Dropout(0.5).eval()
    x = rng.standard_normal((4, 5)).astype(np.float32)
    state = scratchnet.random.get_rng_state()
    dout = rng.standard_normal(x.shape).astype(np.float32)
    out, dx = _train_step(backend, layer, x, dout)
    assert out is x and dx is dout
    assert scratchnet.random.get_rng_state() == state  # nothing drawn
    t = torch.nn.Dropout(0.5).eval()
    np.testing.assert_array_equal(out, t(to_torch(x)).numpy())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_p_zero_and_one_match_torch(rng, backend, dtype):
    x = rng.standard_normal((3, 6)).astype(dtype)
    x[0, :3] = [np.inf, -np.inf, np.nan]
    dout = rng.standard_normal(x.shape).astype(dtype)
    for p in (0.0, 1.0):
        state = scratchnet.random.get_rng_state()
        out, dx = _train_step(backend, snn.Dropout(p), x, dout)
        assert scratchnet.random.get_rng_state() == state  # torch draws nothing either
        t = to_torch(x, requires_grad=True)
        y = F.dropout(t, p, training=True)
        y.backward(torch.tensor(dout))
        # p=1 multiplies by 0 as torch does (so inf and NaN become NaN)
        np.testing.assert_array_equal(out, y.detach().numpy())
        np.testing.assert_array_equal(dx, t.grad.numpy())


@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace_writes_into_input(rng, backend):
    x = rng.standard_normal((5, 6))
    scratchnet.manual_seed(3)
    expected, _ = _train_step(backend, snn.Dropout(0.4), x.copy(), x)
    scratchnet.manual_seed(3)
    out, _ = _train_step(backend, snn.Dropout(0.4, inplace=True), x, x)
    assert out is x
    np.testing.assert_array_equal(x, expected)


def test_numba_matches_numpy(numba_path, rng):
    x = rng.standard_normal((6, 7, 8)).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    results = []
    for name in BACKENDS:
        out, cache = ops(name).dropout_forward(x, 0.35, np.random.default_rng(5))
        results.append((out, ops(name).dropout_backward(dout, cache)))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_repr_and_validation():
    assert repr(snn.Dropout()) == repr(torch.nn.Dropout())
    assert repr(snn.Dropout(0.2, True)) == repr(torch.nn.Dropout(0.2, True))
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match="between 0 and 1"):
            snn.Dropout(p)
    with pytest.raises(TypeError, match="Dropout: expected a float32 or float64"):
        snn.Dropout()(np.ones(3, np.int64))
    with pytest.raises(RuntimeError, match="before forward"):
        snn.Dropout().backward(np.ones(3))
