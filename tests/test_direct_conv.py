"""The direct convolution kernel (direct_conv.py): which layers take it, and that it computes
torch's convolution at every output, for every block shape, writing nothing outside its output."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import scratchnet as sn
from scratchnet.backend import ops, use_backend
from scratchnet.backends.numba_backend import direct_conv
from scratchnet.backends.numba_backend.conv import uses_direct
from tests.helpers import DTYPES, assert_close, conv_case_arrays, conv_case_id, to_torch

NO_PAD = (1, 1, 0, 0, 0, 0, 1, 1)  # sh, sw, pt, pb, pl, pr, dh, dw

# (N, C, H, W, F, (KH, KW), bias): every one taken by the direct kernel in both dtypes
CASES = [
    (2, 1, 28, 28, 10, (5, 5), True),    # lenet conv1: F = 10, the last filter block overlaps
    (3, 10, 12, 12, 20, (5, 5), True),   # lenet conv2: one vector a row, short last group
    (1, 1, 28, 28, 16, (3, 3), True),    # OW = 26: the last vector of a row overlaps
    (2, 3, 9, 17, 6, (2, 3), False),     # non-square kernel, no bias, OW = 15
    (1, 2, 5, 18, 4, (1, 3), True),      # exactly FILTERS filters, one row of taps
    (0, 1, 10, 10, 4, (3, 3), True),     # empty batch
]


def _torch_out(x, w, b):
    return F.conv2d(to_torch(x), to_torch(w), None if b is None else to_torch(b))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=conv_case_id)
def test_direct_kernel_matches_torch(case, dtype):
    x, w, b = conv_case_arrays(case, dtype)
    KH, KW = w.shape[2:]
    OW = x.shape[3] - KW + 1
    # the test is about the direct kernel: it must be the path these layers take
    assert uses_direct(x, w, (KH, KW) + NO_PAD, 1, OW)
    o = ops("numba")
    conv_args = ((1, 1), (0, 0, 0, 0), (1, 1), 1)
    out, cache = o.conv2d_forward(x, w, b, *conv_args)
    assert_close(out, _torch_out(x, w, b), dtype, "conv2d out")
    fused, _ = o.conv2d_relu_forward(x, w, b, *conv_args)
    np.testing.assert_array_equal(fused, np.maximum(out, 0))
    # backward still runs im2col + GEMM on the direct forward's cache
    dout = np.random.default_rng(1).standard_normal(out.shape).astype(dtype)
    tx, tw = to_torch(x, requires_grad=True), to_torch(w, requires_grad=True)
    tb = None if b is None else to_torch(b, requires_grad=True)
    F.conv2d(tx, tw, tb).backward(to_torch(dout))
    dx, dw, db = o.conv2d_backward(dout, cache)
    assert_close(dx, tx.grad, dtype, "dx")
    assert_close(dw, tw.grad, dtype, "dw")
    if b is not None:
        assert_close(db, tb.grad, dtype, "db")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES[:4], ids=conv_case_id)
def test_direct_kernel_writes_only_its_output(case, dtype):
    """Sentinels one vector wide on both sides of the (F, OH·OW) output stay untouched, and
    every output is written (the buffer starts as NaN)."""
    x, w, b = conv_case_arrays(case, dtype)
    Fo, C, KH, KW = w.shape
    OH, OW = x.shape[2] - KH + 1, x.shape[3] - KW + 1
    V = direct_conv.lanes(dtype)
    size = Fo * OH * OW
    buffer = np.full(size + 2 * V, np.nan, dtype=dtype)
    buffer[:V] = buffer[-V:] = 7.0
    out = buffer[V:V + size].reshape(Fo, OH * OW)
    bias = b if b is not None else np.zeros(Fo, dtype=dtype)
    for n in range(x.shape[0]):
        direct_conv.conv_direct_sample(x, n, w.reshape(Fo, -1), bias, out, KH, KW, OH, OW)
        assert np.all(buffer[:V] == 7.0) and np.all(buffer[-V:] == 7.0)
        assert_close(out.reshape(Fo, OH, OW), _torch_out(x[n:n + 1], w, b)[0], dtype, "out")


@pytest.mark.parametrize("dtype", DTYPES)
def test_direct_conv_relu_pool_and_model_layers(dtype, rng):
    """The fused conv + ReLU + pool on a direct layer matches torch, in training (with a
    workspace: no columns kept, backward unfolds) and evaluation."""
    x, w, b = conv_case_arrays((3, 2, 14, 18, 6, (3, 3), True), dtype)
    o = ops("numba")
    args = ((1, 1), (0, 0, 0, 0), (1, 1), 1, (2, 2), (2, 2), (0, 0), (1, 1), False)
    tx, tw, tb = (to_torch(a, requires_grad=True) for a in (x, w, b))
    ref = F.max_pool2d(F.relu(F.conv2d(tx, tw, tb)), 2)
    dout = rng.standard_normal(ref.shape).astype(dtype)
    ref.backward(to_torch(dout))
    for workspace in (None, {}):
        out, cache = o.conv2d_relu_maxpool2d_forward(x, w, b, *args, workspace=workspace)
        assert_close(out, ref, dtype, "out")
        if workspace is not None:
            assert "cols" not in workspace  # nothing unfolded in forward
        for name, got, t in zip(("dx", "dw", "db"),
                                o.conv2d_relu_maxpool2d_backward(dout, cache), (tx, tw, tb)):
            assert_close(got, t.grad, dtype, name)


def test_which_layers_are_direct():
    """The rule in direct_conv.applies, on the models' layers and on each condition."""
    f32 = np.dtype(np.float32)

    def applies(F_, C, K, OW, geo=NO_PAD, groups=1, dtype=f32):
        return direct_conv.applies((F_, C, K, K), (K, K) + geo, groups, OW, dtype)

    assert applies(10, 1, 5, 24) and applies(20, 10, 5, 8)  # lenet conv1, conv2
    assert not applies(32, 1, 3, 26)  # digitcnn / mitxcnn conv1: 32 filters
    assert applies(20, 1, 3, 26)
    assert not applies(64, 32, 3, 11)  # their conv2: a large GEMM
    assert not applies(20, 28, 3, 11)  # 16 vector slots for 11 outputs
    assert applies(20, 28, 3, 11, dtype=np.dtype(np.float64))  # 12 slots of 4 float64
    assert not applies(20, 29, 3, 24)  # 261 taps
    assert not applies(150, 1, 5, 28, geo=(1, 1, 2, 2, 2, 2, 1, 1))  # widecnn conv1: padding
    assert not applies(150, 1, 5, 24)  # ... and 150 filters
    assert not applies(10, 1, 5, 24, geo=(2, 1, 0, 0, 0, 0, 1, 1))  # stride
    assert not applies(10, 1, 5, 24, geo=(1, 1, 0, 0, 0, 0, 1, 2))  # dilation
    assert not applies(10, 2, 5, 24, groups=2)
    assert not applies(3, 1, 5, 24)  # fewer filters than a block
    assert not applies(10, 1, 5, 7)  # a row shorter than a vector
    assert not applies(10, 4, 1, 24)  # 1×1: im2col is the identity already


@pytest.mark.parametrize("dtype", DTYPES)
def test_lenet_layers_direct_and_equal_to_plain(dtype, rng):
    """A Conv2d module on lenet's conv1 shape: numba (direct) matches torch and the numpy
    backend, forward and backward."""
    sn.manual_seed(0)
    layer = sn.nn.Conv2d(1, 10, 5, dtype=dtype)
    x = rng.standard_normal((5, 1, 28, 28)).astype(dtype)
    outs = {}
    for backend in ("numba", "numpy"):
        with use_backend(backend):
            layer.zero_grad()
            out = layer(x)
            dx = layer.backward(np.ones_like(out))
            outs[backend] = (out, dx, layer.weight.grad.copy())
    t_out = F.conv2d(to_torch(x), to_torch(layer.weight.data), to_torch(layer.bias.data))
    assert_close(outs["numba"][0], t_out, dtype, "out")
    for got, want, name in zip(outs["numba"], outs["numpy"], ("out", "dx", "dw")):
        assert_close(got, torch.from_numpy(want), dtype, name)
