"""simd/conv.py's filter-vector kernels and simd/direct_conv.py's direct kernel inside the numba
conv ops, against torch and against the portable path (SCRATCHNET_SIMD=0), plain, ReLU-fused
and ReLU-pool-fused."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scratchnet.backends.numba_backend import conv as nb_conv
from scratchnet.backends.numba_backend import fused as nb_fused
from scratchnet.backends.numba_backend.simd import conv as simd_conv
from scratchnet.backends.numba_backend.simd import direct_conv as simd_direct
from scratchnet.backends.numba_backend.simd import register_block
from scratchnet.backends.numba_backend.simd.vectors import has_vector_fma, has_wide_vectors
from tests.helpers import DTYPES, assert_close

needs_avx512 = pytest.mark.skipif(not has_wide_vectors(),
                                  reason="the filter-vector kernels need AVX-512, which this "
                                         "CPU lacks (the portable path runs instead)")

# (N, C, H, W, F, (KH, KW), (top, bottom, left, right), bias): every one a layer the kernels
# take in float32 and float64 (F a multiple of 64); OH·OW never a multiple of the block's
# register_block.ROWS pixels, so each plane ends in a short block
CASES = [
    (2, 3, 9, 9, 64, (3, 3), (0, 0, 0, 0), True),  # 7·7 pixels, one thread
    (5, 32, 13, 13, 64, (3, 3), (0, 0, 0, 0), True),  # digitcnn's conv2 on 11·11, two threads
    (3, 6, 7, 10, 64, (2, 3), (1, 1, 1, 1), False),  # padded, 8·10
    (2, 4, 7, 5, 128, (5, 5), (2, 2, 2, 2), True),  # widecnn-like padding, two blocks, 7·5
    (3, 3, 8, 7, 64, (4, 4), (1, 2, 1, 2), True),  # torch's "same" for an even kernel, 8·7
]


def case_id(case):
    N, C, H, W, Fo, k, pad, bias = case
    return f"N{N}-C{C}-{H}x{W}-F{Fo}-k{k[0]}x{k[1]}-p{''.join(map(str, pad))}-b{int(bias)}"


def arrays(case, dtype, seed=0):
    N, C, H, W, Fo, (KH, KW), _, bias = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = (rng.standard_normal((Fo, C, KH, KW)) / np.sqrt(C * KH * KW)).astype(dtype)
    b = rng.standard_normal(Fo).astype(dtype) if bias else None
    return x, w, b


CONV = ((1, 1), (1, 1), 1)  # stride, dilation, groups
POOL = ((2, 2), (2, 2), (0, 0), (1, 1), False)  # MaxPool2d(2)


def run_op(op, x, w, b, pad, input_grad, dout_seed=1):
    """(out, dx, dw, db) of the numba op ``op`` ("conv", "relu" or "pool") for a random dout."""
    stride, dilation, groups = CONV
    if op == "conv":
        out, cache = nb_conv.conv2d_forward(x, w, b, stride, pad, dilation, groups)
        backward = nb_conv.conv2d_backward
    elif op == "relu":
        out, cache = nb_fused.conv2d_relu_forward(x, w, b, stride, pad, dilation, groups)
        backward = nb_fused.conv2d_relu_backward
    else:
        out, cache = nb_fused.conv2d_relu_maxpool2d_forward(x, w, b, stride, pad, dilation,
                                                            groups, *POOL)
        backward = nb_fused.conv2d_relu_maxpool2d_backward
    dout = np.random.default_rng(dout_seed).standard_normal(out.shape).astype(x.dtype)
    dx, dw, db = backward(dout, cache, input_grad=input_grad)
    return out, dout, dx, dw, db


def torch_op(op, x, w, b, pad, dout):
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True) if b is not None else None
    top, bottom, left, right = pad
    y = F.conv2d(F.pad(tx, (left, right, top, bottom)), tw, tb)
    if op != "conv":
        y = torch.relu(y)
    if op == "pool":
        y = F.max_pool2d(y, 2)
    y.backward(torch.tensor(dout))
    return y, tx.grad, tw.grad, (tb.grad if tb is not None else None)


def geometry(case):
    N, C, H, W, Fo, (KH, KW), pad, _ = case
    return nb_conv.geometry((N, C, H, W), (Fo, C, KH, KW), (1, 1), pad, (1, 1), 1)


def test_cases_end_in_a_short_block_of_pixels():
    for case in CASES:
        g = geometry(case)
        assert (g.OH * g.OW) % register_block.ROWS != 0, case_id(case)


@pytest.mark.parametrize("input_grad", [True, False])
@pytest.mark.parametrize("op", ["conv", "relu", "pool"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_torch(case, dtype, op, input_grad):
    x, w, b = arrays(case, dtype)
    pad = case[6]
    out, dout, dx, dw, db = run_op(op, x, w, b, pad, input_grad)
    t_out, t_dx, t_dw, t_db = torch_op(op, x, w, b, pad, dout)
    assert_close(out, t_out, dtype, "out")
    assert_close(dw, t_dw, dtype, "dw")
    if b is not None:
        assert_close(db, t_db, dtype, "db")
    if input_grad:
        assert_close(dx, t_dx, dtype, "dx")
    else:
        assert dx is None


@needs_avx512
@pytest.mark.parametrize("op", ["conv", "pool"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_vector_path_matches_portable_path(case, dtype, op, simd_switch):
    x, w, b = arrays(case, dtype, seed=2)
    simd_switch(True)
    assert nb_conv._plan(geometry(case), dtype).vector
    vector = run_op(op, x, w, b, case[6], True)
    simd_switch(False)
    assert not nb_conv._plan(geometry(case), dtype).vector
    portable = run_op(op, x, w, b, case[6], True)
    for name, got, want in zip(("out", "dout", "dx", "dw", "db"), vector, portable):
        if want is not None:
            assert_close(got, want, dtype, name)


# the tutorial models' layers the kernels are for: (x shape, w shape, padding)
MODEL_LAYERS = {
    "digitcnn/mitxcnn conv2": ((64, 32, 13, 13), (64, 32, 3, 3), (0, 0, 0, 0)),
    "examplenet conv2": ((64, 32, 26, 26), (64, 32, 3, 3), (0, 0, 0, 0)),
    "widecnn conv2": ((50, 150, 14, 14), (64, 150, 5, 5), (2, 2, 2, 2)),
}


@needs_avx512
@pytest.mark.parametrize("layer", MODEL_LAYERS)
def test_selection_takes_the_models_layers(layer, simd_switch):
    x_shape, w_shape, pad = MODEL_LAYERS[layer]
    g = nb_conv.geometry(x_shape, w_shape, (1, 1), pad, (1, 1), 1)
    simd_switch(True)
    assert simd_conv.applies(g, np.float32)
    simd_switch(False)
    assert not simd_conv.applies(g, np.float32)


@pytest.mark.parametrize("change", [
    dict(stride=(2, 1)), dict(dilation=(1, 2)), dict(groups=2), dict(F=96), dict(kernel=1),
    dict(C=512),  # weights past MAX_WEIGHT_BYTES
])
def test_selection_leaves_other_layers_to_the_portable_path(change, simd_switch):
    simd_switch(True)
    F_, C, k = change.get("F", 64), change.get("C", 32), change.get("kernel", 3)
    g = nb_conv.geometry((4, C, 13, 13), (F_, C // change.get("groups", 1), k, k),
                         change.get("stride", (1, 1)), (0, 0, 0, 0),
                         change.get("dilation", (1, 1)), change.get("groups", 1))
    assert not simd_conv.applies(g, np.float32)
    g_base = nb_conv.geometry((4, 32, 13, 13), (64, 32, 3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1)
    assert simd_conv.applies(g_base, np.float32) == has_wide_vectors()


@needs_avx512
def test_float64_blocks_are_32_filters(simd_switch):
    simd_switch(True)
    g = nb_conv.geometry((2, 3, 8, 8), (32, 3, 3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1)
    assert simd_conv.applies(g, np.float64) and not simd_conv.applies(g, np.float32)
    x, w, b = arrays((2, 3, 8, 8, 32, (3, 3), (0, 0, 0, 0), True), np.float64)
    out, dout, dx, dw, db = run_op("relu", x, w, b, (0, 0, 0, 0), True)
    t_out, t_dx, t_dw, t_db = torch_op("relu", x, w, b, (0, 0, 0, 0), dout)
    for name, got, want in zip(("out", "dx", "dw", "db"), (out, dx, dw, db),
                               (t_out, t_dx, t_dw, t_db)):
        assert_close(got, want, np.float64, name)


@needs_avx512
def test_kernels_refuse_operands_of_the_wrong_size():
    xs = np.zeros((3, 8, 8), np.float32)
    wt = np.zeros((27, 64), np.float32)
    with pytest.raises(ValueError, match="conv2d forward"):
        simd_conv.forward_sample(xs, wt, np.zeros(64, np.float32),
                                 np.zeros((64, 35), np.float32), 3, 3, 6, 6)
    with pytest.raises(ValueError, match="conv2d backward"):
        simd_conv.weight_grad_sample(xs, np.zeros((36, 64), np.float32),
                                     np.zeros((26, 64), np.float32), 3, 3, 6, 6)


# simd/direct_conv.py: the forward pass of stride-1, unpadded layers of 4-20 filters

needs_avx2 = pytest.mark.skipif(not has_vector_fma(),
                                reason="the direct kernel needs AVX2 and FMA, which this CPU "
                                       "lacks (the portable path runs instead)")

# (N, C, H, W, F, (KH, KW)): F not a multiple of the block's 4 filters (the last block
# overlaps), rows whose last vector overlaps the one before, and planes whose vectors end in
# a short group of the block's 3
DIRECT_CASES = [
    (2, 1, 28, 28, 10, (5, 5)),  # lenet's conv1
    (3, 10, 12, 12, 20, (5, 5)),  # lenet's conv2
    (2, 3, 9, 16, 6, (3, 3)),  # 7·14 outputs: two vectors a row, the second overlapping
    (60, 2, 10, 18, 4, (2, 3)),  # two threads
]


def direct_id(case):
    N, C, H, W, Fo, k = case
    return f"N{N}-C{C}-{H}x{W}-F{Fo}-k{k[0]}x{k[1]}"


def direct_arrays(case, dtype, seed=0):
    N, C, H, W, Fo, k = case
    return arrays((N, C, H, W, Fo, k, (0, 0, 0, 0), True), dtype, seed)


@pytest.mark.parametrize("op", ["conv", "relu", "pool"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", DIRECT_CASES, ids=direct_id)
def test_direct_matches_torch(case, dtype, op):
    x, w, b = direct_arrays(case, dtype)
    out, dout, dx, dw, db = run_op(op, x, w, b, (0, 0, 0, 0), True)
    t_out, t_dx, t_dw, t_db = torch_op(op, x, w, b, (0, 0, 0, 0), dout)
    for name, got, want in zip(("out", "dx", "dw", "db"), (out, dx, dw, db),
                               (t_out, t_dx, t_dw, t_db)):
        assert_close(got, want, dtype, name)


def direct_geometry(case):
    N, C, H, W, Fo, (KH, KW) = case
    return nb_conv.geometry((N, C, H, W), (Fo, C, KH, KW), (1, 1), (0, 0, 0, 0), (1, 1), 1)


@needs_avx2
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", DIRECT_CASES, ids=direct_id)
def test_direct_path_matches_portable_path(case, dtype, simd_switch):
    x, w, b = direct_arrays(case, dtype, seed=3)
    simd_switch(True)
    assert nb_conv._plan(direct_geometry(case), dtype).direct
    direct = run_op("pool", x, w, b, (0, 0, 0, 0), False)
    simd_switch(False)
    assert not nb_conv._plan(direct_geometry(case), dtype).direct
    portable = run_op("pool", x, w, b, (0, 0, 0, 0), False)
    for name, got, want in zip(("out", "dout", "dx", "dw", "db"), direct, portable):
        if want is not None:
            assert_close(got, want, dtype, name)


@pytest.mark.parametrize("change", [
    dict(padding=(1, 1, 1, 1)), dict(stride=(1, 2)), dict(F=3), dict(F=24), dict(C=11),
    dict(W=10),  # OW = 6, narrower than a vector of 8 float32
])
def test_direct_selection(change, simd_switch):
    simd_switch(True)
    C, Fo, W = change.get("C", 10), change.get("F", 20), change.get("W", 12)
    g = nb_conv.geometry((4, C, 12, W), (Fo, C, 5, 5), change.get("stride", (1, 1)),
                         change.get("padding", (0, 0, 0, 0)), (1, 1), 1)
    assert not simd_direct.applies(g, np.float32)
    lenet = direct_geometry(DIRECT_CASES[1])
    assert simd_direct.applies(lenet, np.float32) == has_vector_fma()
    assert not nb_conv._plan(lenet, np.float32, backward=True).direct
    simd_switch(False)
    assert not simd_direct.applies(lenet, np.float32)


@needs_avx2
def test_direct_kernel_refuses_operands_of_the_wrong_size():
    with pytest.raises(ValueError, match="conv2d forward"):
        simd_direct.forward_sample(np.zeros((2, 12, 12), np.float32),
                                   np.zeros((20, 49), np.float32), np.zeros(20, np.float32),
                                   np.zeros((20, 64), np.float32), 5, 5, 8, 8)


# im2col layers whose backward products run on simd.linear's kernels (Plan.products):
# (x shape, w shape, stride, padding (top, bottom, left, right), dilation, groups). Positions
# per sample from 64 (a float32 row block exactly) up; grouped, strided, dilated and padded
# ones included
PRODUCT_CASES = [
    ((3, 1, 28, 28), (32, 1, 3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1),  # mitxcnn's conv1
    ((5, 10, 12, 12), (20, 10, 5, 5), (1, 1), (0, 0, 0, 0), (1, 1), 1),  # lenet's conv2: 8·8
    ((2, 4, 20, 17), (6, 2, 3, 2), (2, 1), (1, 0, 2, 1), (1, 2), 2),
    ((4, 3, 11, 13), (96, 3, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),  # 96 filters: not vector
]


def product_case_id(case):
    x_shape, w_shape, stride, pad, dilation, groups = case
    return (f"x{'x'.join(map(str, x_shape))}-w{'x'.join(map(str, w_shape))}-s{stride[0]}"
            f"{stride[1]}-p{''.join(map(str, pad))}-d{dilation[0]}{dilation[1]}-g{groups}")


def _conv_pair(case, dtype, input_grad):
    x_shape, w_shape, stride, pad, dilation, groups = case
    rng = np.random.default_rng(3)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    out, cache = nb_conv.conv2d_forward(x, w, b, stride, pad, dilation, groups)
    dout = rng.standard_normal(out.shape).astype(dtype)
    return (x, w, b, dout, out) + nb_conv.conv2d_backward(dout, cache, input_grad=input_grad)


@needs_avx512
@pytest.mark.parametrize("input_grad", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", PRODUCT_CASES, ids=product_case_id)
def test_product_kernels_match_torch_and_the_portable_path(case, dtype, input_grad, simd_switch):
    x_shape, w_shape, stride, pad, dilation, groups = case
    g = nb_conv.geometry(x_shape, w_shape, stride, pad, dilation, groups)
    simd_switch(True)
    assert nb_conv._plan(g, dtype, backward=True).products
    x, w, b, dout, out, dx, dw, db = _conv_pair(case, dtype, input_grad)
    top, bottom, left, right = pad
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    y = F.conv2d(F.pad(tx, (left, right, top, bottom)), tw, tb, stride, 0, dilation, groups)
    y.backward(torch.tensor(dout))
    assert_close(out, y, dtype, "out")
    assert_close(dw, tw.grad, dtype, "dw")
    assert_close(db, tb.grad, dtype, "db")
    if input_grad:
        assert_close(dx, tx.grad, dtype, "dx")
    simd_switch(False)
    assert not nb_conv._plan(g, dtype, backward=True).products
    portable = _conv_pair(case, dtype, input_grad)
    for name, got, want in zip(("out", "dx", "dw", "db"), (out, dx, dw, db), portable[4:]):
        if want is not None:
            assert_close(got, want, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_product_selection(dtype, simd_switch):
    """Plan.products in the backward pass where AVX-512 is there and a plane holds a row block
    of positions; never in the forward pass; not for smaller planes, nor under
    SCRATCHNET_SIMD=0."""
    simd_switch(True)
    g = nb_conv.geometry((2, 3, 10, 10), (96, 3, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)
    assert nb_conv._plan(g, dtype, backward=True).products == has_wide_vectors()
    assert not nb_conv._plan(g, dtype).products
    small = nb_conv.geometry((2, 3, 7, 7), (96, 3, 3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1)
    assert not nb_conv._plan(small, dtype, backward=True).products  # 5·5 positions
    simd_switch(False)
    assert not nb_conv._plan(g, dtype, backward=True).products
