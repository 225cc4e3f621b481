"""The filter-vector convolution kernels (filter_vector_conv.py): which layers take them, and
that their forward pass and weight gradient are torch's at every output, for short and exact
blocks of pixels, taps and filters, writing nothing outside their outputs.

The kernels run on any x86-64 CPU (LLVM splits the 512-bit operations where AVX-512 is
missing), so the kernel tests below run everywhere; only the layers' choice of them
(``applies``) depends on the CPU, and the tests through the layers say when it was not taken.
"""
import numpy as np
import pytest
import torch.nn.functional as F

from scratchnet.backend import ops
from scratchnet.backends.numba_backend import filter_vector_conv as fvc
from scratchnet.backends.numba_backend import fused, simd
from scratchnet.backends.numba_backend.conv import forward_method
from tests.helpers import DTYPES, assert_close, conv_case_arrays, conv_case_id, to_torch

NO_PAD = (1, 1, 0, 0, 0, 0, 1, 1)  # sh, sw, pt, pb, pl, pr, dh, dw
POOL_ARGS = ((2, 2), (2, 2), (0, 0), (1, 1), False)


def cases(dtype):
    """(N, C, H, W, F, (KH, KW), bias) for ``dtype``; F counts in filter blocks (64 float32,
    32 float64)."""
    B = fvc.filter_block(dtype)
    return [
        (3, 32, 13, 13, B, (3, 3), True),      # digitcnn's conv2 shape: 121 pixels (17 blocks
                                               # of 7 and a short one), 288 taps (41 and 1)
        (2, 32, 12, 12, B, (4, 4), True),      # multicnn's conv2 shape
        (1, 3, 7, 9, 2 * B, (2, 3), False),    # two filter blocks, no bias, 18 taps
        (2, 1, 4, 10, B, (2, 2), True),        # 4 taps (one short block), 27 pixels
        (1, 2, 3, 3, B, (3, 3), True),         # one output pixel
        (0, 2, 5, 5, B, (3, 3), True),         # empty batch
    ]


ALL_CASES = [(dtype, case) for dtype in DTYPES for case in cases(dtype)]
IDS = [f"{np.dtype(d).name}-{conv_case_id(c)}" for d, c in ALL_CASES]


def _sentinel_buffer(shape, dtype, margin):
    """(buffer, view): a view of ``shape`` inside a NaN-filled buffer with ``margin`` values of
    7 on both sides."""
    size = int(np.prod(shape))
    buffer = np.full(size + 2 * margin, np.nan, dtype=dtype)
    buffer[:margin] = buffer[-margin:] = 7.0
    return buffer, buffer[margin:margin + size].reshape(shape)


@pytest.mark.parametrize("dtype,case", ALL_CASES, ids=IDS)
def test_forward_kernel_matches_torch(dtype, case):
    """Every output written (the output starts as NaN), nothing outside it, torch's values."""
    x, w, b = conv_case_arrays(case, dtype)
    Fo, C, KH, KW = w.shape
    OH, OW = x.shape[2] - KH + 1, x.shape[3] - KW + 1
    wt = np.ascontiguousarray(w.reshape(Fo, -1).T)
    bias = b if b is not None else np.zeros(Fo, dtype=dtype)
    margin = 64
    for n in range(x.shape[0]):
        buffer, out = _sentinel_buffer((Fo, OH * OW), dtype, margin)
        fvc.conv_forward_sample(x, n, wt, bias, out, KH, KW, OH, OW)
        assert np.all(buffer[:margin] == 7.0) and np.all(buffer[-margin:] == 7.0)
        want = F.conv2d(to_torch(x[n:n + 1]), to_torch(w), None if b is None else to_torch(b))
        assert_close(out.reshape(Fo, OH, OW), want[0], dtype, "out")


@pytest.mark.parametrize("dtype,case", ALL_CASES, ids=IDS)
def test_weight_grad_kernel_matches_torch(dtype, case):
    """dWᵀ accumulated over the samples (added into what is there: it starts at 1), the
    transposition of each sample's gradient, and nothing written outside dWᵀ."""
    x, w, b = conv_case_arrays(case, dtype)
    Fo, C, KH, KW = w.shape
    N, OH, OW = x.shape[0], x.shape[2] - KH + 1, x.shape[3] - KW + 1
    dout = np.random.default_rng(1).standard_normal((N, Fo, OH, OW)).astype(dtype)
    margin = 64
    buffer, dwT = _sentinel_buffer((C * KH * KW, Fo), dtype, margin)
    dwT[...] = 1.0
    doutT = np.empty((OH * OW, Fo), dtype=dtype)
    for n in range(N):
        fvc.transpose_plane(dout[n].reshape(Fo, OH * OW), doutT)
        np.testing.assert_array_equal(doutT, dout[n].reshape(Fo, -1).T)
        fvc.weight_grad_sample(x, n, doutT, dwT, KH, KW, OH, OW)
    assert np.all(buffer[:margin] == 7.0) and np.all(buffer[-margin:] == 7.0)
    tx, tw = to_torch(x), to_torch(w, requires_grad=True)
    F.conv2d(tx, tw).backward(to_torch(dout))
    want = tw.grad.numpy().reshape(Fo, -1).T + 1.0
    assert_close(dwT, want, dtype, "dwT")


def padded_cases(dtype):
    """(N, C, H, W, F, (KH, KW), bias, (pt, pb, pl, pr)): layers the callers pad for."""
    B = fvc.filter_block(dtype)
    return [
        (3, 6, 14, 14, B, (5, 5), True, (2, 2, 2, 2)),    # widecnn's conv2, fewer channels
        (2, 3, 5, 7, B, (3, 3), False, (1, 0, 2, 1)),     # unequal sides, no bias
        (1, 2, 3, 3, 2 * B, (2, 2), True, (3, 3, 3, 3)),  # padding wider than the kernel
        (0, 2, 5, 5, B, (3, 3), True, (1, 1, 1, 1)),      # empty batch
        # channels within 30 % of whole filter blocks: dx by the correlation of the padded
        # gradient with the flipped weights (conv.uses_transposed_input_grad)
        (2, B - B // 5, 9, 9, B, (5, 5), True, (2, 2, 2, 2)),  # widecnn's conv2, smaller
        (2, B - B // 8, 7, 8, B, (3, 3), False, (0, 2, 1, 2)),  # unequal sides, no bias
        (1, 2 * B - B // 4, 5, 5, B, (2, 2), True, (1, 1, 1, 1)),  # C over two blocks
        (1, B, 6, 6, B, (3, 3), True, (0, 0, 0, 0)),            # unpadded, C one block
    ]


PADDED_CASES = [(dtype, case) for dtype in DTYPES for case in padded_cases(dtype)]
PADDED_IDS = [f"{np.dtype(d).name}-{conv_case_id(c[:7])}-p{'.'.join(map(str, c[7]))}"
              for d, c in PADDED_CASES]


def test_which_layers_take_the_correlation_input_grad():
    """conv.uses_transposed_input_grad: padding within the kernel, channels near whole
    filter blocks, flipped weights of at most 2 MB."""
    from scratchnet.backends.numba_backend.conv import uses_transposed_input_grad as rule
    f32 = np.dtype(np.float32)
    geo = (5, 5, 1, 1, 2, 2, 2, 2, 1, 1)
    assert rule((64, 150, 5, 5), geo, f32)  # widecnn's conv2: 150 -> 192 channels
    assert not rule((64, 32, 3, 3), (3, 3) + NO_PAD, f32)  # digitcnn's conv2: 32 -> 64
    assert not rule((64, 150, 5, 5), (5, 5, 1, 1, 5, 2, 2, 2, 1, 1), f32)  # pad > kernel - 1
    assert not rule((128, 300, 5, 5), geo, f32)  # flipped weights of 4.1 MB


def _layer_takes_kernels(x, w, padding=(0, 0, 0, 0)):
    geo = w.shape[2:] + (1, 1) + tuple(padding) + (1, 1)
    OW = x.shape[3] + padding[2] + padding[3] - w.shape[3] + 1
    return forward_method(x, w, geo, 1, OW) == "filter_vectors"


def _check_layers(x, w, b, padding, dtype, rng, workspaces):
    """conv2d, conv2d + ReLU and conv2d + ReLU + max-pool (once per workspace in
    ``workspaces``) on x: outputs and all three gradients against torch, on x zero-padded by
    ``padding`` (pt, pb, pl, pr)."""
    o = ops("numba")
    tx, tw = to_torch(x, requires_grad=True), to_torch(w, requires_grad=True)
    tb = None if b is None else to_torch(b, requires_grad=True)
    pt, pb, pl, pr = padding
    OH = x.shape[2] + pt + pb - w.shape[2] + 1
    OW = x.shape[3] + pl + pr - w.shape[3] + 1
    layers = [("conv", o.conv2d_forward, o.conv2d_backward, lambda t: t, {}),
              ("conv+relu", o.conv2d_relu_forward, o.conv2d_relu_backward, F.relu, {})]
    if OH >= 2 and OW >= 2:
        for workspace in workspaces:
            layers.append(("conv+relu+pool", o.conv2d_relu_maxpool2d_forward,
                           o.conv2d_relu_maxpool2d_backward,
                           lambda t: F.max_pool2d(F.relu(t), 2),
                           {"workspace": workspace}))
    conv_args = ((1, 1), tuple(padding), (1, 1), 1)
    for name, forward, backward, after, extra in layers:
        for t in (tx, tw, tb):
            if t is not None:
                t.grad = None
        ref = after(F.conv2d(F.pad(tx, (pl, pr, pt, pb)), tw, tb))
        args = conv_args + (POOL_ARGS if "pool" in name else ())
        out, cache = forward(x, w, b, *args, **extra)
        assert_close(out, ref, dtype, f"{name} out")
        dout = rng.standard_normal(out.shape).astype(dtype)
        ref.backward(to_torch(dout))
        dx, dw, db = backward(dout, cache)
        assert_close(dx, tx.grad, dtype, f"{name} dx")
        assert_close(dw, tw.grad, dtype, f"{name} dw")
        if b is not None:
            assert_close(db, tb.grad, dtype, f"{name} db")
        if extra.get("workspace") is not None:
            assert "cols" not in extra["workspace"]  # no columns, forward or backward


@pytest.mark.parametrize("dtype,case", ALL_CASES, ids=IDS)
def test_layers_through_kernels_match_torch(dtype, case, rng):
    """The layers on these kernels, with and without a workspace, against torch."""
    x, w, b = conv_case_arrays(case, dtype)
    if not _layer_takes_kernels(x, w):
        pytest.skip("this CPU has no AVX-512: the layers run im2col + GEMM (tested elsewhere)")
    _check_layers(x, w, b, (0, 0, 0, 0), dtype, rng, (None, {}))


@pytest.mark.parametrize("dtype,case", PADDED_CASES, ids=PADDED_IDS)
def test_padded_layers_match_torch(dtype, case, rng, monkeypatch):
    """A padded layer runs the kernels on zero-padded copies of its samples: kept from forward
    for backward (a workspace), padded again in backward (no workspace, or too large to keep),
    and a workspace reused for a second batch (the copies' zero borders stay zero)."""
    x, w, b = conv_case_arrays(case[:7], dtype)
    padding = case[7]
    if not _layer_takes_kernels(x, w, padding):
        pytest.skip("this CPU has no AVX-512: the layers run im2col + GEMM (tested elsewhere)")
    workspace = {}
    _check_layers(x, w, b, padding, dtype, rng, (None, workspace))
    x2 = rng.standard_normal(x.shape).astype(dtype)
    _check_layers(x2, w, b, padding, dtype, rng, (workspace,))
    if x.shape[0] > 0 and any(padding):
        assert workspace["padded"].shape[0] == x.shape[0]  # one copy per sample, kept
    monkeypatch.setattr(fused, "KEEP_COLUMNS_MAX_BYTES", 0)
    _check_layers(x, w, b, padding, dtype, rng, ({},))


def test_which_layers_take_the_kernels():
    """The rule in filter_vector_conv.applies, on the models' layers and on each condition."""
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)

    def applies(F_, C, K, geo=NO_PAD, groups=1, dtype=f32):
        return fvc.applies((F_, C, K, K), (K, K) + geo, groups, dtype)

    wide = simd.has_wide_vectors()
    assert applies(64, 32, 3) == wide  # digitcnn's and mitxcnn's conv2
    assert applies(64, 32, 4) == wide  # multicnn's conv2
    assert applies(32, 32, 3, dtype=f64) == wide  # 32 float64 filters fill a block
    assert applies(128, 32, 3) == wide
    assert not applies(32, 1, 3)  # their conv1: 32 float32 filters, half a block
    assert not applies(96, 32, 3)  # not a whole number of blocks
    assert applies(64, 150, 5, geo=(1, 1, 2, 2, 2, 2, 1, 1)) == wide  # widecnn's conv2: 960 KB
    assert not applies(64, 300, 5)  # 1.9 MB of weights
    assert not applies(64, 150, 5, dtype=f64)  # widecnn's conv2 in float64: 1.9 MB too
    assert not applies(64, 32, 3, geo=(2, 2, 0, 0, 0, 0, 1, 1))  # stride
    assert not applies(64, 32, 3, geo=(1, 1, 0, 0, 0, 0, 2, 2))  # dilation
    assert not applies(64, 32, 3, groups=2)
    assert not applies(64, 32, 1)  # 1×1: im2col is the identity already
