"""Conv2d and the conv2d op pair against torch.nn.functional.conv2d with autograd."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import scratchnet as sn
from scratchnet.backend import ops, use_backend
from scratchnet.backends.numpy_backend import conv as np_conv
from tests.helpers import BACKENDS, DTYPES, assert_close, to_torch

# (N, C_in, H, W, C_out, kernel_size, stride, padding, dilation, groups, bias);
# N None means an unbatched (C, H, W) input.
CASES = [
    (1, 3, 8, 7, 5, 3, 1, 0, 1, 1, True),
    (3, 3, 9, 9, 4, (2, 3), (2, 1), (1, 2), 1, 1, False),
    (0, 2, 5, 5, 3, 3, 1, 1, 1, 1, True),
    (2, 4, 7, 8, 6, 5, 1, "same", 1, 2, True),
    (2, 3, 6, 7, 2, (2, 4), 1, "same", (2, 1), 1, True),
    (3, 5, 11, 10, 7, 1, 1, 0, 1, 1, True),
    (2, 3, 10, 9, 4, (1, 3), (3, 4), (0, 1), 1, 1, True),
    (2, 4, 7, 7, 8, 3, 1, 2, 2, 4, False),
    (1, 2, 6, 5, 3, (3, 2), 2, "valid", 1, 1, True),
    (None, 3, 9, 8, 5, 5, 2, 2, 1, 1, True),
    (None, 2, 4, 6, 2, 1, 2, 0, 1, 2, False),
    (3, 6, 13, 11, 9, 3, (2, 3), 1, (1, 2), 3, True),
    # unpadded with horizontal stride 1 (unfold's plain-copy loop): vertical stride and
    # dilation, then grouped with horizontal dilation
    (2, 3, 9, 8, 4, 3, (2, 1), 0, (2, 1), 1, True),
    (2, 4, 8, 9, 6, 3, 1, 0, (1, 2), 2, True),
    # stride 1, OW == W with a kernel wider than the image: column rows with no valid entry
    (2, 3, 2, 1, 4, 5, 1, 2, 1, 1, True),
    # backward in several channel chunks (see test_chunked_cases_take_several_chunks):
    # grouped and same-width, then strided and padded
    (2, 80, 12, 12, 6, 5, 1, 2, 1, 2, True),
    (2, 200, 20, 20, 3, 3, 2, 1, 1, 1, False),
]
CHUNKED_CASES = CASES[-2:]


def case_id(case):
    N, C, H, W, Co, k, s, p, d, g, bias = case
    return f"N{N}-C{C}-{H}x{W}-F{Co}-k{k}-s{s}-p{p}-d{d}-g{g}-b{int(bias)}".replace(" ", "")


def make_layer_and_input(case, dtype, seed=0):
    N, C, H, W, Co, k, s, p, d, g, bias = case
    sn.manual_seed(seed)
    layer = sn.nn.Conv2d(C, Co, k, stride=s, padding=p, dilation=d, groups=g, bias=bias,
                         dtype=dtype)
    rng = np.random.default_rng(seed)
    shape = (C, H, W) if N is None else (N, C, H, W)
    x = rng.standard_normal(shape).astype(dtype)
    return layer, x


def torch_conv(layer, x, dout):
    """torch's output and gradients for the layer's weights at input x and upstream dout."""
    tx = to_torch(x, requires_grad=True)
    tw = to_torch(layer.weight.data, requires_grad=True)
    tb = to_torch(layer.bias.data, requires_grad=True) if layer.bias is not None else None
    out = F.conv2d(tx, tw, tb, stride=layer.stride, padding=layer.padding,
                   dilation=layer.dilation, groups=layer.groups)
    out.backward(to_torch(dout))
    return out, tx.grad, tw.grad, (tb.grad if tb is not None else None)


# torch warns that it pads a copy for even kernels with padding="same"; that is its business
@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_conv2d_matches_torch(case, dtype, backend):
    layer, x = make_layer_and_input(case, dtype)
    with use_backend(backend):
        out = layer(x)
        dout = np.random.default_rng(1).standard_normal(out.shape).astype(dtype)
        dx = layer.backward(dout)
    t_out, t_dx, t_dw, t_db = torch_conv(layer, x, dout)
    assert out.dtype == dtype and dx.dtype == dtype and layer.weight.grad.dtype == dtype
    assert dx.shape == x.shape
    assert_close(out, t_out, dtype, "out")
    assert_close(dx, t_dx, dtype, "dx")
    assert_close(layer.weight.grad, t_dw, dtype, "dw")
    if layer.bias is None:
        assert t_db is None
    else:
        assert layer.bias.grad.dtype == dtype
        assert_close(layer.bias.grad, t_db, dtype, "db")


def _op_args(case, dtype):
    layer, x = make_layer_and_input(case, dtype)
    x = x if x.ndim == 4 else x[None]
    b = layer.bias.data if layer.bias is not None else None
    return x, layer.weight.data, b, layer.stride, layer._padding_tblr, layer.dilation, layer.groups


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_numba_op_matches_numpy_op(case, dtype):
    args = _op_args(case, dtype)
    results = {}
    for name in BACKENDS:
        out, cache = ops(name).conv2d_forward(*args)
        dout = np.random.default_rng(2).standard_normal(out.shape).astype(dtype)
        results[name] = (out,) + tuple(ops(name).conv2d_backward(dout, cache))
    for label, a, b in zip(("out", "dx", "dw", "db"), results["numba"], results["numpy"]):
        if b is None:
            assert a is None, label
            continue
        assert a.dtype == b.dtype == dtype and a.shape == b.shape, label
        assert_close(a, b, dtype, label)


def test_numba_op_accepts_strided_and_readonly_arrays(rng):
    # kernels need C-contiguous writeable arrays; the op wrapper must make them
    x = rng.standard_normal((6, 5, 3, 2)).transpose(3, 2, 1, 0)  # (2, 3, 5, 6), not contiguous
    w = rng.standard_normal((4, 3, 2, 2))
    w.flags.writeable = False
    b = rng.standard_normal(8)[::2]
    args = (x, w, b, (1, 2), (1, 0, 0, 1), (2, 1), 1)
    dout = rng.standard_normal((2, 4, 4, 3))[:, :, :, ::-1]
    want_out, want_cache = np_conv.conv2d_forward(*args)
    got_out, got_cache = ops("numba").conv2d_forward(*args)
    assert_close(got_out, want_out, np.float64, "out")
    for g, e in zip(ops("numba").conv2d_backward(dout, got_cache),
                    np_conv.conv2d_backward(dout, want_cache)):
        assert_close(g, e, np.float64)


def test_numpy_op_directional_gradient_check(rng):
    """Central difference of L = Σ out·dout along one random direction in (x, w, b) jointly.

    L is bilinear in (x, w) plus linear in b, so the central difference is exact up to round-off.
    """
    x = rng.standard_normal((2, 4, 6, 5))
    w = rng.standard_normal((6, 2, 3, 2))
    b = rng.standard_normal(6)
    conf = ((2, 1), (1, 0, 2, 1), (1, 2), 2)
    out, cache = np_conv.conv2d_forward(x, w, b, *conf)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = np_conv.conv2d_backward(dout, cache)
    vx, vw, vb = (rng.standard_normal(a.shape) for a in (x, w, b))

    def loss(t):
        return np.sum(np_conv.conv2d_forward(x + t * vx, w + t * vw, b + t * vb, *conf)[0] * dout)

    eps = 1e-4
    numeric = (loss(eps) - loss(-eps)) / (2 * eps)
    analytic = np.sum(dx * vx) + np.sum(dw * vw) + np.sum(db * vb)
    assert abs(numeric - analytic) <= 1e-8 * max(abs(analytic), 1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_accumulate_over_backward_calls(backend):
    case = (2, 3, 7, 6, 4, 3, 2, 1, 1, 1, True)
    layer, x = make_layer_and_input(case, np.float64)
    with use_backend(backend):
        out = layer(x)
        dout = np.random.default_rng(3).standard_normal(out.shape)
        layer.backward(dout)
        layer(x)
        layer.backward(dout)
    _, _, t_dw, t_db = torch_conv(layer, x, dout)
    assert_close(layer.weight.grad, 2 * t_dw, np.float64, "dw")
    assert_close(layer.bias.grad, 2 * t_db, np.float64, "db")


@pytest.mark.parametrize("kwargs", [
    dict(in_channels=3, out_channels=4, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=(2, 3), stride=2, padding=1, bias=False),
    dict(in_channels=4, out_channels=4, kernel_size=(2, 4), padding="same", dilation=(2, 1),
         groups=2),
    dict(in_channels=4, out_channels=8, kernel_size=3, padding="valid", groups=4),
    dict(in_channels=2, out_channels=2, kernel_size=1, stride=(1, 3), padding=(0, 2)),
])
def test_constructor_matches_torch(kwargs):
    ours, theirs = sn.nn.Conv2d(**kwargs), torch.nn.Conv2d(**kwargs)
    assert repr(ours) == repr(theirs)
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                 "dilation", "groups", "padding_mode"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert ours.weight.shape == tuple(theirs.weight.shape)
    assert ours.weight.dtype == np.float32
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    # torch's default init: weight and bias both U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    fan_in = ours.weight.data[0].size
    bound = 1 / math.sqrt(fan_in)
    assert np.all(np.abs(ours.weight.data) <= bound)
    if ours.bias is not None:
        assert ours.bias.shape == (kwargs["out_channels"],)
        assert np.all(np.abs(ours.bias.data) <= bound)


def test_default_init_spread():
    sn.manual_seed(0)
    w = sn.nn.Conv2d(16, 32, 3).weight.data
    bound = 1 / math.sqrt(16 * 9)
    # U(-b, b) has standard deviation b/sqrt(3)
    assert abs(w.std() - bound / math.sqrt(3)) < 0.05 * bound
    assert w.max() > 0.95 * bound and w.min() < -0.95 * bound


@pytest.mark.parametrize("make, x, error, match", [
    (lambda: sn.nn.Conv2d(3, 4, 3), np.zeros((2, 3), np.float32), ValueError,
     r"Conv2d: expected 3D \(unbatched\) or 4D \(batched\) input.*\(2, 3\)"),
    (lambda: sn.nn.Conv2d(3, 4, 3), np.zeros((1, 1, 3, 5, 5), np.float32), ValueError,
     r"Conv2d: expected 3D"),
    (lambda: sn.nn.Conv2d(3, 4, 3), np.zeros((1, 4, 5, 5), np.float32), ValueError,
     r"Conv2d: .*expected input \(1, 4, 5, 5\) to have 3 channels, but got 4"),
    (lambda: sn.nn.Conv2d(4, 4, 3, groups=2), np.zeros((2, 5, 5), np.float32), ValueError,
     r"groups=2.*to have 4 channels, but got 2"),
    (lambda: sn.nn.Conv2d(3, 4, 3), np.zeros((1, 3, 5, 5), np.float64), TypeError,
     r"Conv2d: input dtype float64 does not match weight dtype float32"),
    (lambda: sn.nn.Conv2d(3, 4, 3), np.zeros((1, 3, 5, 5), np.int64), TypeError,
     r"int64.*float32"),
    (lambda: sn.nn.Conv2d(3, 4, 5), np.zeros((1, 3, 3, 3), np.float32), ValueError,
     r"padded input size per channel: \(3 x 3\)\. Kernel size: \(5 x 5\)"),
    (lambda: sn.nn.Conv2d(3, 4, 3, dilation=(1, 3), padding=(0, 1)),
     np.zeros((1, 3, 4, 4), np.float32), ValueError,
     r"padded input size per channel: \(4 x 6\)\. Kernel size: \(3 x 7\)"),
])
def test_bad_input_raises(make, x, error, match):
    with pytest.raises(error, match=match):
        make()(x)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(groups=2), ValueError, "in_channels must be divisible by groups"),
    (dict(in_channels=4, groups=2), ValueError, "out_channels must be divisible by groups"),
    (dict(groups=0), ValueError, "groups must be a positive integer"),
    (dict(stride=2, padding="same"), ValueError, "padding='same' is not supported for strided"),
    (dict(padding="full"), ValueError, "invalid padding string 'full'"),
    (dict(padding=-1), ValueError, "padding must be >= 0"),
    (dict(stride=(1, 0)), ValueError, "stride must be >= 1"),
    (dict(kernel_size=(3, 3, 3)), ValueError, "kernel_size must be an int or a pair"),
    (dict(padding_mode="reflect"), NotImplementedError, "padding_mode='reflect'"),
    (dict(padding_mode="mirror"), ValueError, "padding_mode must be one of"),
    (dict(dtype=np.int32), TypeError, "dtype must be float32 or float64"),
])
def test_bad_constructor_arguments_raise(kwargs, error, match):
    args = dict(in_channels=3, out_channels=3, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        sn.nn.Conv2d(**args)


def test_backward_errors():
    layer = sn.nn.Conv2d(2, 3, 3)
    with pytest.raises(RuntimeError, match="Conv2d: backward called before forward"):
        layer.backward(np.zeros((1, 3, 2, 2), np.float32))
    layer(np.zeros((1, 2, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"Conv2d: expected gradient of shape \(1, 3, 2, 2\)"):
        layer.backward(np.zeros((3, 2, 2), np.float32))


def test_backward_uses_the_forward_backend():
    # caches are backend-specific: switching backends between the passes must still work
    layer, x = make_layer_and_input((2, 3, 6, 6, 4, 3, 1, 1, 1, 1, True), np.float64)
    with use_backend("numpy"):
        out = layer(x)
    with use_backend("numba"):
        dx = layer.backward(np.ones_like(out))
    _, t_dx, t_dw, _ = torch_conv(layer, x, np.ones_like(out))
    assert_close(dx, t_dx, np.float64, "dx")
    assert_close(layer.weight.grad, t_dw, np.float64, "dw")


_NO_JIT_SCRIPT = """
import numpy as np
from scratchnet.backends.numba_backend import conv as nb
from scratchnet.backends.numpy_backend import conv as npc

rng = np.random.default_rng(0)
confs = [(((2, 1), (1, 0, 2, 1), (1, 2), 2), (6, 2, 3, 2)),  # strided, padded, dilated, grouped
         (((1, 1), (0, 0, 0, 0), (1, 1), 1), (5, 4, 1, 1)),  # the pointwise shortcut
         (((1, 1), (1, 1, 2, 2), (1, 2), 1), (3, 4, 3, 3))]  # same width: OW == W
for dtype in (np.float64, np.float32):
    for conf, wshape in confs:
        x = rng.standard_normal((3, 4, 6, 5)).astype(dtype)
        w = rng.standard_normal(wshape).astype(dtype)
        b = rng.standard_normal(wshape[0]).astype(dtype)
        got, got_cache = nb.conv2d_forward(x, w, b, *conf)
        want, want_cache = npc.conv2d_forward(x, w, b, *conf)
        dout = rng.standard_normal(want.shape).astype(dtype)
        pairs = [(got, want)] + list(zip(nb.conv2d_backward(dout, got_cache),
                                         npc.conv2d_backward(dout, want_cache)))
        for g, e in pairs:
            assert g.dtype == dtype
            err = np.abs(g - e).max() / np.abs(e).max()
            assert err < (1e-5 if dtype == np.float32 else 1e-12), err
print("ok")
"""


def test_numba_kernels_correct_without_jit():
    """NUMBA_DISABLE_JIT=1 runs the kernels as Python (prange = range, gemm = np.dot)."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", _NO_JIT_SCRIPT], env=env, cwd=root,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def _unfold_reference(x_n, KH, KW, sh, sw, pt, pb, pl, pr, dh, dw, OH, OW):
    """im2col by its definition: col[(c·KH+kh)·KW+kw, oh·OW+ow] = padded x_n at the tap."""
    xp = np.pad(x_n, ((0, 0), (pt, pb), (pl, pr)))
    C = x_n.shape[0]
    col = np.empty((C, KH, KW, OH, OW), x_n.dtype)
    for kh in range(KH):
        for kw in range(KW):
            col[:, kh, kw] = xp[:, kh * dh:kh * dh + sh * (OH - 1) + 1:sh,
                                kw * dw:kw * dw + sw * (OW - 1) + 1:sw]
    return col.reshape(C * KH * KW, OH * OW)


# (C, H, W, KH, KW, sh, sw, dh, dw, pt, pb, pl, pr)
UNFOLDS = [
    (3, 14, 14, 5, 5, 1, 1, 1, 1, 2, 2, 2, 2),    # widecnn's conv2, scaled down in C
    (2, 6, 7, 2, 4, 1, 1, 2, 1, 1, 1, 1, 2),     # even kernel, uneven padding, dilated
    (2, 3, 1, 5, 5, 1, 1, 1, 1, 2, 2, 2, 2),     # one column: most taps are padding
    (1, 2, 2, 3, 5, 1, 1, 1, 1, 0, 0, 2, 2),     # taps entirely outside the image
    (2, 9, 8, 3, 2, 2, 3, 2, 1, 1, 0, 2, 1),     # strided and dilated, uneven padding
]


@pytest.mark.parametrize("geo", UNFOLDS, ids=str)
def test_unfold_and_fold_match_their_definitions(geo):
    """The compiled im2col of samples side by side against the definition, and col2im against
    its adjoint (each tap's plane added into a padded image), from NaN-filled and random
    buffers so that a missed entry shows."""
    from scratchnet.backends.numba_backend import conv as nb

    C, H, W, KH, KW, sh, sw, dh, dw, pt, pb, pl, pr = geo
    N, n0, n1 = 4, 1, 3
    g = nb.geometry((N, C, H, W), (2, C, KH, KW), (sh, sw), (pt, pb, pl, pr), (dh, dw), 1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W))
    cols = np.full((1, C * KH * KW, (n1 - n0) * g.OH * g.OW), np.nan)
    P = g.OH * g.OW
    for i, n in enumerate(range(n0, n1)):
        nb.unfold_sample(x, g, n, cols, i * P)
    for i, n in enumerate(range(n0, n1)):
        want = _unfold_reference(x[n], KH, KW, sh, sw, pt, pb, pl, pr, dh, dw, g.OH, g.OW)
        np.testing.assert_array_equal(cols[0, :, i * P:(i + 1) * P], want)

    dcols = rng.standard_normal(cols.shape)
    dx = rng.standard_normal(x.shape)
    expected = dx.copy()
    for i, n in enumerate(range(n0, n1)):
        xp = np.zeros((C, H + pt + pb, W + pl + pr))
        taps = dcols[0, :, i * P:(i + 1) * P].reshape(C, KH, KW, g.OH, g.OW)
        for kh in range(KH):
            for kw in range(KW):
                xp[:, kh * dh:kh * dh + sh * (g.OH - 1) + 1:sh,
                   kw * dw:kw * dw + sw * (g.OW - 1) + 1:sw] += taps[:, kh, kw]
        expected[n] += xp[:, pt:pt + H, pl:pl + W]
    for i, n in enumerate(range(n0, n1)):
        nb.fold_sample(dcols, g, n, dx, i * P)
    np.testing.assert_allclose(dx, expected, rtol=1e-13, atol=1e-13)


def test_one_sample_per_gemm_equals_several(rng, monkeypatch):
    """GEMMs over one sample's columns give the results of GEMMs over several side by side."""
    from scratchnet.backends.numba_backend import conv as nb

    x = rng.standard_normal((5, 4, 9, 8))
    w = rng.standard_normal((6, 2, 3, 2))
    b = rng.standard_normal(6)
    conf = ((2, 1), (1, 1, 2, 0), (1, 2), 2)
    whole, cache = nb.conv2d_forward(x, w, b, *conf)
    dout = rng.standard_normal(whole.shape)
    grads = nb.conv2d_backward(dout, cache)
    monkeypatch.setattr(nb, "BLOCK_BYTES", 1)  # one sample per GEMM
    chunked, cache = nb.conv2d_forward(x, w, b, *conf)
    np.testing.assert_allclose(chunked, whole, rtol=1e-13, atol=1e-13)
    for got, want in zip(nb.conv2d_backward(dout, cache), grads):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
