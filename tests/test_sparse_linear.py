"""The numba backend's linear forward over an input's nonzeros (sparse_linear.py) against torch.

Each test that means to exercise that path first asserts ``applies``, so none of them passes
by quietly running the GEMM instead.
"""
import os
import subprocess
import sys

import numba
import numpy as np
import pytest
import torch

import scratchnet as sn
from scratchnet.backends.numba_backend import linear, sparse_linear
from tests.helpers import DTYPES, TORCH_DTYPE, assert_close

pytestmark = pytest.mark.skipif(numba.config.DISABLE_JIT,
                                reason="the path needs compiled code (applies is False)")


def _sparse_input(rng, shape, density, dtype):
    """Values in [0, 1) with about ``density`` of them nonzero, the rest exactly 0."""
    x = rng.random(shape)
    return np.where(rng.random(shape) < density, x, 0.0).astype(dtype)


def _weights(rng, out_features, in_features, dtype):
    return (rng.standard_normal((out_features, in_features)) * 0.1).astype(dtype)


def _torch_linear(x, w, b):
    """x·wᵀ + b in torch (addmm, as torch.nn.Linear computes it)."""
    x, w = torch.from_numpy(x), torch.from_numpy(w)
    if b is None:
        return (x @ w.T).numpy()
    return torch.addmm(torch.from_numpy(b), x, w.T).numpy()


def _mnist_unit_range(n, dtype=np.float32):
    """n MNIST test images as the mlp tutorials feed them: (n, 784), pixels / 255."""
    images, _ = sn.data.load_mnist("test")
    return (images[:n].reshape(n, 784) / 255.0).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,in_features,out_features", [
    (sparse_linear.MIN_ROWS, 784, 128),   # the fewest rows taken
    (1000, 784, 128),                     # mlp128's first layer at batch 1000
    (sparse_linear.MIN_ROWS + 1, 100, 200),  # odd rows split over threads; several blocks
    (sparse_linear.MIN_ROWS + 44, 17, 64),   # in not a multiple of the vector width
    (sparse_linear.MIN_ROWS + 22, 5, 70),    # fewer inputs than a vector; out not a multiple
    (sparse_linear.MIN_ROWS * 2, 33, 65),    # one output past a block: the last one overlaps
])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.2, sparse_linear.MAX_DENSITY])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch(rng, dtype, n, in_features, out_features, density, bias):
    x = _sparse_input(rng, (n, in_features), density * 0.9, dtype)
    w = _weights(rng, out_features, in_features, dtype)
    b = rng.standard_normal(out_features).astype(dtype) if bias else None
    bias_or_zeros = b if bias else np.zeros(out_features, dtype)
    assert sparse_linear.applies(x, w, bias_or_zeros)
    direct = sparse_linear.forward(x, w, bias_or_zeros)
    out, _ = linear.linear_forward(x, w, b)
    expected = _torch_linear(x, w, b)
    assert out.dtype == direct.dtype == dtype and out.shape == (n, out_features)
    np.testing.assert_array_equal(out, direct)  # linear_forward took this path
    assert_close(out, expected, dtype, "out")


@pytest.mark.parametrize("dtype", DTYPES)
def test_awkward_rows(rng, dtype):
    """Rows with no nonzero (the output is the bias), a single one at the last input, every
    input nonzero (a dense row in a sparse batch), and nonzeros only at the vector tail."""
    n, in_features, out_features = sparse_linear.MIN_ROWS, 787, 96
    x = _sparse_input(rng, (n, in_features), 0.1, dtype)
    x[0] = 0
    x[1] = 0
    x[1, -1] = 0.5
    x[2] = rng.random(in_features)
    x[3] = 0
    x[3, -3:] = 1.0
    w = _weights(rng, out_features, in_features, dtype)
    b = rng.standard_normal(out_features).astype(dtype)
    assert sparse_linear.applies(x, w, b)
    out = sparse_linear.forward(x, w, b)
    np.testing.assert_array_equal(out[0], b)
    assert_close(out, _torch_linear(x, w, b), dtype, "out")


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_input_values_count_as_nonzero(rng, dtype):
    """NaN and ±inf inputs are taken (their products are torch's NaN/inf); -0.0 is a zero."""
    x = _sparse_input(rng, (sparse_linear.MIN_ROWS, 64), 0.1, dtype)
    x[5, 3], x[6, 10], x[7, 63], x[8, :] = np.nan, np.inf, -np.inf, -0.0
    w = _weights(rng, 64, 64, dtype)
    b = rng.standard_normal(64).astype(dtype)
    assert sparse_linear.applies(x, w, b)
    out = sparse_linear.forward(x, w, b)
    expected = _torch_linear(x, w, b)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(expected))
    finite = np.isfinite(expected)
    assert_close(out[finite], expected[finite], dtype, "finite outputs")
    np.testing.assert_array_equal(out[8], b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_nonfinite_weights_fall_back_to_the_gemm(rng, dtype, bad):
    """0·inf is NaN: with a non-finite weight facing zeros, skipping them would be wrong, so
    forward declines and linear_forward's GEMM gives torch's NaNs."""
    x = _sparse_input(rng, (sparse_linear.MIN_ROWS, 50), 0.1, dtype)
    x[:, 7] = 0  # the bad weight's input is zero in every row
    w = _weights(rng, 70, 50, dtype)
    w[3, 7] = bad
    b = rng.standard_normal(70).astype(dtype)
    assert sparse_linear.applies(x, w, b)
    assert sparse_linear.forward(x, w, b) is None
    out, _ = linear.linear_forward(x, w, b)
    expected = _torch_linear(x, w, b)
    assert np.isnan(expected[:, 3]).all()
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    assert_close(out[:, np.arange(70) != 3], expected[:, np.arange(70) != 3], dtype, "out")


def test_applies_only_where_it_wins(rng):
    x = _mnist_unit_range(1000)
    w = _weights(rng, 128, 784, np.float32)
    b = np.zeros(128, np.float32)
    assert 0.15 < sparse_linear.density(x) < 0.25  # MNIST: ~19 % of pixels nonzero
    assert sparse_linear.applies(x, w, b)
    normalised = ((x - 0.1307) / 0.3081).astype(np.float32)  # no zeros left
    assert sparse_linear.density(normalised) == 1.0
    assert not sparse_linear.applies(normalised, w, b)
    assert not sparse_linear.applies(x[:sparse_linear.MIN_ROWS - 1], w, b)  # training batches
    assert not sparse_linear.applies(x, w[:sparse_linear.block_outputs(np.float32) - 1],
                                     b[:sparse_linear.block_outputs(np.float32) - 1])
    assert not sparse_linear.applies(x.astype(np.float64), w, b)  # mixed dtypes
    denser = _sparse_input(rng, (1000, 784), sparse_linear.MAX_DENSITY + 0.1, np.float32)
    assert not sparse_linear.applies(denser, w, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_same_numbers_on_any_thread_count(rng, dtype):
    """Each row's sum is computed by one thread in one order: the split cannot change it."""
    x = _sparse_input(rng, (2 * sparse_linear.MIN_ROWS, 300), 0.2, dtype)
    w = _weights(rng, 128, 300, dtype)
    b = rng.standard_normal(128).astype(dtype)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = sparse_linear.forward(x, w, b)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = sparse_linear.forward(x, w, b)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one, many)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nonzero_list(rng, dtype):
    """_nonzeros lists exactly numpy's nonzero positions, in order, at every length and tail."""
    V = sparse_linear.lanes(dtype)
    positions = sparse_linear._POSITIONS[V]
    for K in (0, 1, V - 1, V, V + 1, 3 * V + 2, 784):
        for density in (0.0, 0.3, 1.0):
            row = _sparse_input(rng, K, density, dtype)
            if K > 2:
                row[1], row[2] = np.nan, -0.0
            index = np.full(K + V, -1, dtype=np.int32)
            m = sparse_linear._nonzeros(row, 0, K, positions, index)
            np.testing.assert_array_equal(index[:m], np.flatnonzero(row))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(128, 784), (7, 5), (13, 21), (64, 64), (3, 1)])
def test_transpose_and_finite_check(rng, dtype, shape):
    w = rng.standard_normal(shape).astype(dtype)
    O, K = shape
    for k0, k1 in ((0, K), (K // 3, K)):
        wt = np.zeros((K, O), dtype=dtype)
        assert sparse_linear._transpose_columns(w, wt, k0, k1)
        np.testing.assert_array_equal(wt[k0:k1], w.T[k0:k1])
        np.testing.assert_array_equal(wt[:k0], 0)
    for o, k in ((0, 0), (O - 1, K - 1), (O // 2, K // 2)):  # in a tile and at the edges
        for bad in (np.inf, np.nan):
            broken = w.copy()
            broken[o, k] = bad
            assert not sparse_linear._transpose_columns(broken, np.empty((K, O), dtype), 0, K)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mlp128_inference_batch_matches_torch(dtype):
    """The whole model on 1000 real MNIST images in [0, 1] (its tutorial's input): the first
    layer takes the path, and the logits match the torch twin's."""
    from reference import convert, models as ref_models

    x = _mnist_unit_range(1000, dtype)
    sn.manual_seed(0)
    model = sn.models.build("mlp128", dtype=dtype).eval()
    twin = convert.copy_to_torch(model, ref_models.build("mlp128", TORCH_DTYPE[dtype])).eval()
    first = model[0]
    assert sparse_linear.applies(x, first.weight.data, first.bias.data)
    with sn.use_backend("numba"):
        logits = model(x)
    with torch.no_grad():
        expected = twin(torch.from_numpy(x))
    assert_close(logits, expected, dtype, "logits")


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_after_the_sparse_forward(rng, dtype):
    """A training step at a batch the path takes: backward reads the same cache as after the
    GEMM, so the gradients are torch's, and fused Linear+ReLU equals the unfused pair."""
    n = sparse_linear.MIN_ROWS
    x = _sparse_input(rng, (n, 300), 0.2, dtype)
    sn.manual_seed(0)
    fused = sn.nn.Sequential(sn.nn.Linear(300, 64), sn.nn.ReLU(), sn.nn.Linear(64, 10)).to(dtype)
    plain = sn.nn.Sequential(sn.nn.Linear(300, 64), sn.nn.ReLU(), sn.nn.Linear(64, 10)).to(dtype)
    plain.load_state_dict(fused.state_dict())
    twin = torch.nn.Sequential(torch.nn.Linear(300, 64), torch.nn.ReLU(),
                               torch.nn.Linear(64, 10)).to(TORCH_DTYPE[dtype])
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in fused.state_dict().items()})
    dout = rng.standard_normal((n, 10)).astype(dtype)
    assert sparse_linear.applies(x, fused[0].weight.data, fused[0].bias.data)
    results = []
    with sn.use_backend("numba"):
        for model, fusion in ((fused, True), (plain, False)):
            sn.nn.fusion.set_enabled(fusion)
            try:
                out = model(x)
                model.zero_grad()
                dx = model.backward(dout)
            finally:
                sn.nn.fusion.set_enabled(True)
            results.append((out, dx, [p.grad.copy() for p in model.parameters()]))
    for a, b in zip(results[0][:2] + tuple(results[0][2]), results[1][:2] + tuple(results[1][2])):
        np.testing.assert_array_equal(a, b)
    t = torch.from_numpy(x).requires_grad_(True)
    y = twin(t)
    y.backward(torch.from_numpy(dout))
    out, dx, grads = results[0]
    assert_close(out, y, dtype, "out")
    assert_close(dx, t.grad, dtype, "dx")
    for (name, p), g in zip(twin.named_parameters(), grads):
        assert_close(g, p.grad, dtype, f"grad {name}")


def test_first_launch_in_a_fresh_process_starts_the_pool():
    """per_thread.run as a process's first parallel work (no thread count asked before): it
    once crashed the process, as Numba starts its pool only when Python asks."""
    code = ("import numpy as np\n"
            "from scratchnet.backends.numba_backend import per_thread, sparse_linear as s\n"
            "w = np.ones((64, 40), np.float32); wt = np.empty((40, 64), np.float32)\n"
            "finite = np.zeros(2, np.bool_)\n"
            "per_thread.run(s._transpose_thread, 2, (w, wt, finite, 2))\n"
            "assert finite.all() and (wt == 1).all()\n"
            "print('ok')\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
