"""Max pooling, the readable specification: gather every window, pick its winner as torch does."""
import numpy as np

from ..shapes import pool_output_size

__all__ = ["maxpool2d_forward", "maxpool2d_backward"]


def _window_positions(size, out_size, kernel, stride, padding, dilation):
    """Input positions of each window's taps, (out_size, kernel), and whether each is real."""
    pos = (np.arange(out_size)[:, None] * stride - padding
           + np.arange(kernel)[None, :] * dilation)
    inside = (pos >= 0) & (pos < size)
    return np.clip(pos, 0, size - 1), inside


def maxpool2d_forward(x, kernel_size, stride, padding, dilation, ceil_mode):
    """Max over each (dilated) window; padding counts as -inf.

    x: (N, C, H, W); kernel_size, stride, padding (symmetric), dilation: pairs (h, w).
    Returns out (N, C, OH, OW) and a cache holding, per output, the flat index ``h·W + w`` of
    the input element it came from (int64, (N, C, OH, OW)) and x's shape.
    """
    N, C, H, W = x.shape
    (KH, KW), (SH, SW), (PH, PW), (DH, DW) = kernel_size, stride, padding, dilation
    OH = pool_output_size(H, KH, SH, PH, DH, ceil_mode)
    OW = pool_output_size(W, KW, SW, PW, DW, ceil_mode)
    K = KH * KW
    rows, row_inside = _window_positions(H, OH, KH, SH, PH, DH)  # (OH, KH)
    cols, col_inside = _window_positions(W, OW, KW, SW, PW, DW)  # (OW, KW)
    r = rows[:, None, :, None]
    c = cols[None, :, None, :]
    # windows[n, c, oh, ow, kh·KW + kw] = x[n, c, rows[oh, kh], cols[ow, kw]]: torch's scan order
    windows = x[:, :, r, c].reshape(N, C, OH, OW, K)
    inside = (row_inside[:, None, :, None] & col_inside[None, :, None, :]).reshape(OH, OW, K)
    flat_index = np.broadcast_to((r * W + c).reshape(OH, OW, K), (N, C, OH, OW, K))
    windows = np.where(inside, windows, -np.inf)

    # torch scans each window keeping `val > maxval || isnan(val)` from maxval = -inf and the
    # first real element: ties go to the first maximal real element (never to padding, even
    # when the maximum is -inf), and a NaN takes over at each NaN, so the last NaN wins
    is_max = inside & (windows == windows.max(axis=-1, keepdims=True))
    k = np.argmax(is_max, axis=-1)
    is_nan = np.isnan(windows)
    last_nan = K - 1 - np.argmax(is_nan[..., ::-1], axis=-1)
    k = np.where(is_nan.any(axis=-1), last_nan, k)[..., None]

    out = np.take_along_axis(windows, k, axis=-1)[..., 0]
    index = np.take_along_axis(flat_index, k, axis=-1)[..., 0].astype(np.int64)
    return out, (index, x.shape)


def maxpool2d_backward(dout, cache):
    """Each output's gradient goes to the one input element saved in forward.

    dout: (N, C, OH, OW). Returns dx: (N, C, H, W).
    """
    index, x_shape = cache
    N, C, H, W = x_shape
    planes = N * C
    outputs = index.shape[2] * index.shape[3]
    dx = np.zeros((planes, H * W), dtype=dout.dtype)
    # overlapping windows (stride < kernel) can pick the same element: accumulate, don't assign
    np.add.at(dx, (np.arange(planes)[:, None], index.reshape(planes, outputs)),
              dout.reshape(planes, outputs))
    return dx.reshape(x_shape)
