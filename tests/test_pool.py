"""MaxPool2d and the maxpool2d op pair against torch, in both backends."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import scratchnet.nn as snn
from scratchnet.backend import ops, use_backend
from scratchnet.backends.numba_backend import common as numba_common
from tests.helpers import BACKENDS, DTYPES, assert_close, to_torch

# (input shape, kernel_size, stride, padding, dilation, ceil_mode)
CONFIGS = [
    ((2, 3, 8, 8), 2, None, 0, 1, False),
    ((1, 1, 7, 5), 3, 2, 1, 1, False),
    ((0, 2, 6, 6), 2, 2, 0, 1, False),              # empty batch
    ((3, 2, 9, 7), (3, 2), (2, 1), (1, 0), 1, False),
    ((2, 2, 7, 7), 2, 3, 0, 1, False),              # stride > kernel: elements skipped
    ((2, 2, 7, 7), 2, 3, 1, 1, True),
    ((2, 1, 10, 9), 3, 1, 1, 2, False),             # dilation
    ((1, 2, 9, 11), (2, 3), (2, 2), (1, 1), (3, 2), True),
    ((2, 3, 5, 5), 2, 2, 0, 1, True),               # ceil_mode adds a partial window
    ((1, 1, 5, 5), 2, 2, 1, 1, True),               # ceil_mode's extra window would start in
                                                    # the right padding: dropped
    ((1, 2, 1, 1), 1, 1, 0, 1, False),
    ((2, 2, 4, 3), (4, 3), 1, (2, 1), 1, False),
]


@pytest.fixture(params=["serial", "parallel"])
def numba_path(request, monkeypatch):
    """Run numba kernels on the calling thread (small work) or split across threads."""
    if request.param == "parallel":
        monkeypatch.setattr(numba_common, "PARALLEL_MIN_WORK", 0)
    return request.param


def _torch_pool(x, dout, k, s, p, d, ceil_mode):
    t = to_torch(x, requires_grad=True)
    y = F.max_pool2d(t, k, s, p, d, ceil_mode)
    y.backward(torch.tensor(dout))
    return y.detach().numpy(), t.grad.numpy()


def _run_module(backend, x, dout_fn, **kwargs):
    with use_backend(backend):
        pool = snn.MaxPool2d(**kwargs)
        out = pool(x)
        dout = dout_fn(out.shape, x.dtype)
        return out, dout, pool.backward(dout)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k,s,p,d,ceil_mode", CONFIGS)
def test_maxpool2d_matches_torch(rng, backend, dtype, shape, k, s, p, d, ceil_mode):
    x = rng.standard_normal(shape).astype(dtype)

    def dout_fn(out_shape, dt):
        return rng.standard_normal(out_shape).astype(dt)

    out, dout, dx = _run_module(backend, x, dout_fn, kernel_size=k, stride=s, padding=p,
                                dilation=d, ceil_mode=ceil_mode)
    t_out, t_dx = _torch_pool(x, dout, k, s, p, d, ceil_mode)
    assert out.dtype == dtype and dx.dtype == dtype
    assert_close(out, t_out, dtype, "out")
    assert_close(dx, t_dx, dtype, "dx")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,k,s,p,d,ceil_mode", CONFIGS)
def test_maxpool2d_ties_follow_torch(rng, backend, shape, k, s, p, d, ceil_mode):
    # integers in {-1, 0, 1} repeat inside nearly every window: the winner must be torch's
    x = rng.integers(-1, 2, size=shape).astype(np.float64)
    out, dout, dx = _run_module(backend, x, lambda sh, dt: rng.standard_normal(sh), kernel_size=k,
                                stride=s, padding=p, dilation=d, ceil_mode=ceil_mode)
    t_out, t_dx = _torch_pool(x, dout, k, s, p, d, ceil_mode)
    np.testing.assert_array_equal(out, t_out)
    np.testing.assert_array_equal(dx, t_dx)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", [0.0, 2.5, -np.inf])
def test_maxpool2d_all_equal_windows(backend, value):
    # every element equal (even -inf, which must not lose to the -inf padding)
    x = np.full((2, 2, 5, 6), value)
    cfg = dict(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=True)
    out, dout, dx = _run_module(backend, x, lambda sh, dt: np.arange(np.prod(sh), dtype=dt)
                                .reshape(sh) + 1.0, **cfg)
    t_out, t_dx = _torch_pool(x, dout, 3, 2, 1, 1, True)
    np.testing.assert_array_equal(out, t_out)
    np.testing.assert_array_equal(dx, t_dx)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool2d_2x2_nan_and_signed_zero_follow_torch(rng, backend, dtype):
    # the numba backend's MaxPool2d(2) fast path splits windows with a NaN from the rest:
    # NaNs anywhere in a window (one, several, all), next to ties and -0.0 == +0.0 ties
    x = rng.integers(-1, 2, size=(2, 3, 8, 9)).astype(dtype)
    x[0, 0, 0, 0] = np.nan                       # first tap
    x[0, 0, 1, 3] = np.nan                       # last tap
    x[0, 0, 2:4, 4:6] = np.nan                   # every tap
    x[0, 1, 0, 1] = x[0, 1, 1, 0] = np.nan       # two taps
    x[1, 0, :2, :2] = [[-0.0, 0.0], [0.0, -0.0]]
    x[1, 1, :2, :2] = [[-1.0, -0.0], [0.0, -2.0]]
    x[1, 2] = rng.standard_normal((8, 9))        # no ties at all
    out, dout, dx = _run_module(backend, x, lambda sh, dt: rng.standard_normal(sh).astype(dt),
                                kernel_size=2)
    t_out, t_dx = _torch_pool(x, dout, 2, 2, 0, 1, False)
    np.testing.assert_array_equal(out, t_out)
    np.testing.assert_array_equal(np.signbit(out), np.signbit(t_out))
    np.testing.assert_array_equal(dx, t_dx)


@pytest.mark.parametrize("backend", BACKENDS)
def test_maxpool2d_nan_follows_torch(rng, backend):
    # torch's scan takes every NaN it meets: a NaN window outputs NaN and the last NaN gets
    # the gradient
    x = rng.standard_normal((2, 3, 6, 6))
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = np.nan
    x[1, 2, 4:, 4:] = np.nan
    x[0, 1, 2, 2] = np.inf
    x[0, 1, 3, 3] = np.nan
    out, dout, dx = _run_module(backend, x, lambda sh, dt: rng.standard_normal(sh), kernel_size=3,
                                stride=1, padding=1)
    t_out, t_dx = _torch_pool(x, dout, 3, 1, 1, 1, False)
    np.testing.assert_array_equal(out, t_out)
    np.testing.assert_array_equal(dx, t_dx)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool2d_unbatched(rng, backend, dtype):
    x = rng.standard_normal((3, 7, 6)).astype(dtype)
    dout_holder = {}

    def dout_fn(sh, dt):
        dout_holder["d"] = rng.standard_normal(sh).astype(dt)
        return dout_holder["d"]

    out, dout, dx = _run_module(backend, x, dout_fn, kernel_size=2, stride=2, ceil_mode=True)
    assert out.shape == (3, 4, 3) and dx.shape == x.shape
    t = to_torch(x, requires_grad=True)
    y = torch.nn.MaxPool2d(2, 2, ceil_mode=True)(t)
    y.backward(torch.tensor(dout))
    assert_close(out, y, dtype, "out")
    assert_close(dx, t.grad, dtype, "dx")


@pytest.mark.parametrize("shape,k,s,p,d,ceil_mode", CONFIGS)
def test_numba_matches_numpy(numba_path, rng, shape, k, s, p, d, ceil_mode):
    x = rng.integers(-2, 3, size=shape).astype(np.float32)
    pair = snn.pooling._pair
    args = (pair("k", k), pair("s", s if s is not None else k), pair("p", p), pair("d", d),
            ceil_mode)
    out_np, cache_np = ops("numpy").maxpool2d_forward(x, *args)
    out_nb, cache_nb = ops("numba").maxpool2d_forward(x, *args)
    np.testing.assert_array_equal(out_nb, out_np)
    np.testing.assert_array_equal(cache_nb[0], cache_np[0])
    dout = rng.standard_normal(out_np.shape).astype(np.float32)
    np.testing.assert_allclose(ops("numba").maxpool2d_backward(dout, cache_nb),
                               ops("numpy").maxpool2d_backward(dout, cache_np), rtol=1e-6)


def test_numpy_op_directional_gradient(rng):
    # continuous random data has no ties, so a small step never changes a window's winner
    x = rng.standard_normal((2, 3, 7, 8))
    v = rng.standard_normal(x.shape)
    args = ((3, 2), (2, 2), (1, 1), (1, 2), True)
    out, cache = ops("numpy").maxpool2d_forward(x, *args)
    dout = rng.standard_normal(out.shape)
    dx = ops("numpy").maxpool2d_backward(dout, cache)
    eps = 1e-6
    plus = ops("numpy").maxpool2d_forward(x + eps * v, *args)[0]
    minus = ops("numpy").maxpool2d_forward(x - eps * v, *args)[0]
    numeric = np.sum(dout * (plus - minus)) / (2 * eps)
    assert abs(numeric - np.sum(dx * v)) <= 1e-7 * max(1.0, abs(numeric))


def test_repr_matches_torch():
    configs = [((2,), {}), (((2, 3), 1, 1), {}),
               ((3,), dict(stride=2, padding=1, dilation=2, ceil_mode=True))]
    for args, kwargs in configs:
        assert repr(snn.MaxPool2d(*args, **kwargs)) == repr(torch.nn.MaxPool2d(*args, **kwargs))


def test_validation_errors():
    with pytest.raises(NotImplementedError, match="return_indices"):
        snn.MaxPool2d(2, return_indices=True)
    with pytest.raises(ValueError, match="at most half"):
        snn.MaxPool2d(3, padding=2)
    with pytest.raises(ValueError, match="positive"):
        snn.MaxPool2d(2, stride=0)
    with pytest.raises(ValueError, match="pair"):
        snn.MaxPool2d((2, 2, 2))
    pool = snn.MaxPool2d(2)
    with pytest.raises(ValueError, match=r"MaxPool2d: expected a 3-D .* got shape \(4, 4\)"):
        pool(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="non-zero"):
        pool(np.zeros((1, 0, 4, 4), np.float32))
    with pytest.raises(ValueError, match="too small"):
        snn.MaxPool2d(3, dilation=2)(np.zeros((1, 1, 4, 4), np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        pool(np.zeros((1, 1, 4, 4), np.int64))
    with pytest.raises(RuntimeError, match="before forward"):
        snn.MaxPool2d(2).backward(np.zeros((1, 1, 2, 2), np.float32))
    out = pool(np.zeros((1, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"expected dout of shape \(1, 1, 2, 2\)"):
        pool.backward(np.zeros((1, 1, 3, 3), np.float32))
    # a float64 gradient is cast to the output's float32, as torch's autograd does
    assert pool.backward(np.ones(out.shape, np.float64)).dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("W", [5, 8, 9, 17, 40])
def test_plain_2x2_kernel_matches_torch(dtype, W):
    """The numba pool's MaxPool2d(2) kernel gives torch's maxima and winners: ties between and
    inside windows (integer inputs), ±0, infinities, and NaN; rows of 20 outputs also take the
    loop's vectorised form."""
    from scratchnet.backends.numba_backend import pool

    rng = np.random.default_rng(W)
    x = rng.integers(-2, 3, size=(5, 7, W)).astype(dtype)
    x[1] = rng.standard_normal((7, W))
    x[2, 0, 0] = x[2, 3, W - 1] = np.nan
    x[3, 1, :] = -0.0
    x[3, 2, : W // 2] = np.inf
    x[4, :, :] = -np.inf
    x[4, 5, W - 2] = np.nan
    OH, OW = 3, W // 2
    out, index = np.empty((5, OH, OW), dtype), np.empty((5, OH, OW), np.int64)
    pool._plain_2x2_span(x, out, index, 0, 5)
    t_out, t_index = F.max_pool2d(to_torch(x[None]), 2, return_indices=True)
    np.testing.assert_array_equal(out, t_out[0].numpy())
    np.testing.assert_array_equal(np.signbit(out), np.signbit(t_out[0].numpy()))
    np.testing.assert_array_equal(index, t_index[0].numpy())


@pytest.mark.parametrize("threads", ["serial", "parallel"])
def test_kernel_error_names_the_op(threads, monkeypatch):
    """A failed check inside a compiled kernel, on the calling thread or in a worker of the
    pool, reaches Python as the kernel's exception, naming the op."""
    if threads == "parallel":
        monkeypatch.setattr(numba_common, "PARALLEL_MIN_WORK", 0)
    o = ops("numba")
    dout = np.ones((4, 3, 2, 2), np.float32)
    bad_index = np.full((4, 3, 2, 2), 99, np.int64)
    with pytest.raises(IndexError, match="^maxpool2d_backward: a saved index lies outside"):
        o.maxpool2d_backward(dout, (bad_index, (4, 3, 4, 4)))
    x = np.ones((4, 2, 6, 6), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    conv = ((1, 1), (0, 0, 0, 0), (1, 1), 1)
    out, cache = o.conv2d_relu_maxpool2d_forward(x, w, None, *conv, (2, 2), (2, 2), (0, 0),
                                                 (1, 1), False)
    cache[-1][...] = -1  # the saved pool winners
    with pytest.raises(IndexError, match="^conv2d_relu_maxpool2d_backward: a saved pool index"):
        o.conv2d_relu_maxpool2d_backward(np.ones_like(out), cache)
