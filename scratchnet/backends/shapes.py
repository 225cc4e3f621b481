"""Output sizes of convolution and pooling windows, shared by both backends and the layers."""

__all__ = ["conv_output_size", "pool_output_size"]


def conv_output_size(size, pad_lo, pad_hi, kernel, stride, dilation):
    """Output length along one axis: (size + pads - dilation·(kernel-1) - 1) // stride + 1."""
    return (size + pad_lo + pad_hi - dilation * (kernel - 1) - 1) // stride + 1


def pool_output_size(size, kernel, stride, padding, dilation, ceil_mode):
    """Number of windows along one axis: torch's ``pooling_output_shape`` (may be <= 0).

    ``floor`` (or ``ceil``) of ``(size + 2·padding - dilation·(kernel-1) - 1) / stride`` plus 1.
    """
    span = dilation * (kernel - 1) + 1
    out = (size + 2 * padding - span + (stride - 1 if ceil_mode else 0)) // stride + 1
    # ceil_mode can add a window that starts in the right padding; torch drops it, so every
    # window starts inside the input or the left padding and holds at least one real element
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out
