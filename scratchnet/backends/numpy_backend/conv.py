"""2-D convolution (torch's cross-correlation) as im2col on a strided view plus one einsum.

The im2col view ``cols[n, c, kh, kw, oh, ow] = x_padded[n, c, oh·sh + kh·dh, ow·sw + kw·dw]``
is built with ``as_strided`` (no copy), so every formula below is the textbook one:

    out[n, f]  = b[f] + Σ_{c,kh,kw} w[f, c, kh, kw] · cols[n, c, kh, kw]      (per group)
    dw[f]      = Σ_{n,oh,ow} dout[n, f] · cols[n, ...]
    dcols      = Σ_f w[f] · dout[n, f],   then scattered back (col2im) into dx
"""
import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..shapes import conv_output_size

__all__ = ["conv2d_forward", "conv2d_backward"]


def _im2col_view(x_padded, KH, KW, stride, dilation, OH, OW):
    """Read-only view (N, C, KH, KW, OH, OW) of the padded input: an entry per (patch, position)."""
    sN, sC, sH, sW = x_padded.strides
    N, C = x_padded.shape[:2]
    (sh, sw), (dh, dw) = stride, dilation
    return as_strided(x_padded, shape=(N, C, KH, KW, OH, OW),
                      strides=(sN, sC, sH * dh, sW * dw, sH * sh, sW * sw), writeable=False)


def conv2d_forward(x, w, b, stride, padding, dilation, groups):
    """Grouped, strided, dilated, zero-padded 2-D convolution (torch.nn.functional.conv2d).

    Inputs:
    - x: (N, C, H, W)
    - w: (F, C // groups, KH, KW)
    - b: (F,) or None
    - stride: (sh, sw); padding: (top, bottom, left, right); dilation: (dh, dw); groups: int

    Returns (out, cache): out (N, F, OH, OW) in x's dtype, with
    OH = (H + top + bottom - dh·(KH-1) - 1) // sh + 1 and likewise OW.
    """
    N, C, H, W = x.shape
    F, Cg, KH, KW = w.shape
    top, bottom, left, right = padding
    OH = conv_output_size(H, top, bottom, KH, stride[0], dilation[0])
    OW = conv_output_size(W, left, right, KW, stride[1], dilation[1])
    G, Fg = groups, F // groups

    x_padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    cols = _im2col_view(x_padded, KH, KW, stride, dilation, OH, OW)
    cols_g = cols.reshape(N, G, Cg, KH, KW, OH, OW)
    w_g = w.reshape(G, Fg, Cg, KH, KW)
    out = np.einsum("ngcklhv,gfckl->ngfhv", cols_g, w_g, optimize=True)
    out = out.reshape(N, F, OH, OW).astype(x.dtype, copy=False)
    if b is not None:
        out += b.reshape(1, F, 1, 1)
    cache = (x, w, b is not None, tuple(stride), tuple(padding), tuple(dilation), groups)
    return out, cache


def conv2d_backward(dout, cache, input_grad=True):
    """Gradients of conv2d_forward.

    Inputs:
    - dout: (N, F, OH, OW), upstream gradient
    - cache: from conv2d_forward
    - input_grad: False skips dx (returned as None), as torch does for an input that does not
      require grad (a model's first layer)

    Returns (dx, dw, db): dx (N, C, H, W), dw (F, C // groups, KH, KW), db (F,) or None.
    """
    x, w, has_bias, stride, padding, dilation, groups = cache
    N, C, H, W = x.shape
    F, Cg, KH, KW = w.shape
    top, bottom, left, right = padding
    (sh, sw), (dil_h, dil_w) = stride, dilation
    OH, OW = dout.shape[2:]
    G, Fg = groups, F // groups

    x_padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    cols_g = _im2col_view(x_padded, KH, KW, stride, dilation, OH, OW).reshape(
        N, G, Cg, KH, KW, OH, OW)
    dout_g = dout.reshape(N, G, Fg, OH, OW)
    w_g = w.reshape(G, Fg, Cg, KH, KW)

    db = dout.sum(axis=(0, 2, 3)).astype(x.dtype, copy=False) if has_bias else None
    dw = np.einsum("ngfhv,ngcklhv->gfckl", dout_g, cols_g, optimize=True)
    dw = dw.reshape(w.shape).astype(w.dtype, copy=False)
    if not input_grad:
        return None, dw, db

    # col2im: each kernel offset (kh, kw) touched a strided grid of the padded input; add the
    # column gradients back onto that grid (grids of different offsets overlap, hence +=).
    dcols = np.einsum("ngfhv,gfckl->ngcklhv", dout_g, w_g, optimize=True)
    dcols = dcols.reshape(N, C, KH, KW, OH, OW)
    dx_padded = np.zeros(x_padded.shape, dtype=x.dtype)
    for kh in range(KH):
        for kw in range(KW):
            h0, w0 = kh * dil_h, kw * dil_w
            dx_padded[:, :, h0:h0 + sh * (OH - 1) + 1:sh, w0:w0 + sw * (OW - 1) + 1:sw] += \
                dcols[:, :, kh, kw]
    dx = dx_padded[:, :, top:top + H, left:left + W].copy()
    return dx, dw, db
