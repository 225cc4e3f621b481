"""Preprocessing and mini-batching of image arrays: normalize, train_val_split, batches.

The counterparts of torchvision's ``ToTensor`` + ``Normalize``, ``torch.utils.data.random_split``
and ``torch.utils.data.DataLoader``, for numpy arrays and a seeded numpy Generator.
"""
import math

import numpy as np

from ..random import default_generator


def _as_generator(rng):
    """A numpy Generator from a Generator, an int seed, or None (the library's global one)."""
    if rng is None:
        return default_generator()
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")


def normalize(images, mean=None, std=None, dtype=np.float32, input_shape=None):
    """Turn uint8 images into model input: ``(x / 255 - mean) / std``, or ``x / 255`` in [0, 1].

    images: uint8 (N, ...), e.g. (N, 28, 28). mean, std: floats, both or neither (MNIST's
    usual ones are 0.1307 and 0.3081). dtype: float32 or float64; the arithmetic is done in
    it, as torchvision's ToTensor + Normalize do in float32.
    input_shape: the per-sample shape the model declares, e.g. (1, 28, 28) to add the channel
    axis or (784,) to flatten; None keeps the images' own shape.
    Returns an array of shape (N, *input_shape) (or images.shape) and dtype ``dtype``.
    """
    images = np.asarray(images)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"normalize: dtype must be float32 or float64, got {dtype}")
    if images.dtype != np.uint8 or images.ndim < 1:
        raise TypeError(
            f"normalize: expected uint8 images of shape (N, ...) with values 0..255, "
            f"got {images.dtype} of shape {images.shape}")
    if (mean is None) != (std is None):
        raise ValueError(
            f"normalize: give both mean and std or neither, got mean={mean}, std={std}")
    if std is not None and std == 0:
        raise ValueError("normalize: std must be non-zero")
    shape = images.shape
    if input_shape is not None:
        input_shape = tuple(int(d) for d in input_shape)
        per_sample = math.prod(images.shape[1:])
        if math.prod(input_shape) != per_sample:
            raise ValueError(
                f"normalize: cannot reshape images of shape {images.shape} to input_shape "
                f"{input_shape}: each image has {per_sample} values, input_shape holds "
                f"{math.prod(input_shape)}")
        shape = (images.shape[0],) + input_shape
    x = images.astype(dtype)
    x /= dtype.type(255)
    if mean is not None:
        x -= dtype.type(mean)
        x /= dtype.type(std)
    return x.reshape(shape)


def train_val_split(n, val_fraction=0.1, rng=None):
    """Randomly split ``range(n)`` into disjoint (train_idx, val_idx) int64 index arrays.

    Sizes follow ``torch.utils.data.random_split(range(n), [1 - val_fraction, val_fraction])``:
    each is floor(n * fraction), the remainder handed out one by one starting with train.
    rng: numpy Generator, int seed or None (the global generator); same seed, same split.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"train_val_split: n must be a non-negative int, got {n!r}")
    if not 0 <= val_fraction <= 1:
        raise ValueError(f"train_val_split: val_fraction must be in [0, 1], got {val_fraction}")
    lengths = [math.floor(n * (1 - val_fraction)), math.floor(n * val_fraction)]
    for i in range(n - sum(lengths)):
        lengths[i % 2] += 1
    order = _as_generator(rng).permutation(n)
    return order[:lengths[0]], order[lengths[0]:]


class DataLoader:
    """Iterate over (x, y) mini-batches of two aligned arrays, like torch's DataLoader.

    Each pass yields ``len(self)`` batches ``(images[idx], labels[idx])`` (copies, so a
    training step may modify them). With ``shuffle`` every pass draws a new order from
    ``rng`` (a numpy Generator, an int seed, or None for the library's global generator), so
    the same seed gives the same sequence of batches. The last batch holds the leftover
    ``N % batch_size`` samples unless ``drop_last`` drops it.
    """

    def __init__(self, images, labels, batch_size=1, shuffle=False, rng=None, drop_last=False):
        if len(images) != len(labels):
            raise ValueError(
                f"DataLoader: images and labels differ in length: {len(images)} vs {len(labels)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive int, got {batch_size!r}")
        self.images = images
        self.labels = labels
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        # None is resolved at each pass, so a later manual_seed() takes effect as in torch
        self._rng = None if rng is None else _as_generator(rng)

    def __len__(self):
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.images)
        if self.shuffle:
            rng = default_generator() if self._rng is None else self._rng
            order = rng.permutation(n)
        else:
            order = np.arange(n)
        for k in range(len(self)):
            idx = order[k * self.batch_size:(k + 1) * self.batch_size]
            yield self.images[idx], self.labels[idx]


def batches(images, labels, batch_size, shuffle=False, rng=None, drop_last=False):
    """A DataLoader over ``images`` and ``labels``: ``for x, y in batches(...)``."""
    return DataLoader(images, labels, batch_size, shuffle=shuffle, rng=rng, drop_last=drop_last)
