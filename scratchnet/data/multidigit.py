"""Two overlapping MNIST digits on one canvas: the "two-digit" dataset of MITx 6.86x project 2.

Each sample stacks two digits vertically on a 42 x 28 canvas: the first digit fills rows 0..27,
the second rows 14..41, so the two overlap by 14 rows, where they are combined by pixel
maximum (ink on ink stays ink). A model reads the canvas and names both digits, top first.

    images, labels = load_multidigit("train", seed=0)    # uint8 (40000, 42, 28), int64 (2, 40000)
    x = normalize(images, input_shape=(1, 42, 28))
    y = labels.T                                          # (N, 2): one row per sample for batches

Labels are ``(2, N)`` as the tutorial stores them: ``labels[0]`` the first (upper) digit,
``labels[1]`` the second (lower) one. Datasets can also be read from files: our ``.npz``
(:func:`save_multidigit_npz` / :func:`load_multidigit_npz`) or the tutorial's own
``{split}_multi_digit{suffix}.pkl.gz`` + ``{split}_labels{suffix}.txt.gz``
(:func:`load_multidigit_pkl`, which unpickles only when explicitly allowed);
:func:`load_multidigit_dir` finds either in a folder.
"""
import gzip
import os
import pickle
import zipfile
import zlib

import numpy as np

from ..fileio import atomic_write
from .errors import DataError
from .loader import _as_generator
from .mnist import load_mnist
from .npz import npz_headers

CANVAS_SHAPE = (42, 28)
DEFAULT_OVERLAP = 14
NUM_CLASSES = 10
SPLITS = ("train", "test")


def _check_overlap(overlap, height):
    if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) \
            or not 0 <= overlap <= height:
        raise ValueError(
            f"multidigit: overlap must be an int in 0..{height} (rows shared by the two "
            f"digits), got {overlap!r}")
    return int(overlap)


def compose(first, second, overlap=DEFAULT_OVERLAP):
    """Stack digit images vertically, the second ``overlap`` rows up into the first, by max.

    first, second: (..., h, w) arrays of one dtype (e.g. uint8 (N, 28, 28)).
    Returns (..., 2h - overlap, w): rows ``0..h-1`` from ``first``, rows ``h - overlap ..``
    from ``second``, the shared rows holding the elementwise maximum of the two.
    """
    first = np.asarray(first)
    second = np.asarray(second)
    if first.shape != second.shape or first.ndim < 2:
        raise ValueError(
            f"multidigit.compose: expected two arrays of one shape (..., h, w), got "
            f"{first.shape} and {second.shape}")
    h = first.shape[-2]
    overlap = _check_overlap(overlap, h)
    top = h - overlap
    canvas = np.zeros(first.shape[:-2] + (2 * h - overlap, first.shape[-1]),
                      dtype=np.result_type(first, second))
    canvas[..., :h, :] = first
    np.maximum(canvas[..., top:, :], second, out=canvas[..., top:, :])
    return canvas


def make_multidigit(images, labels, n, overlap=DEFAULT_OVERLAP, rng=None, return_indices=False):
    """Draw ``n`` two-digit samples from single-digit ``images`` (deterministic given ``rng``).

    images: uint8 (M, h, w), e.g. MNIST (M, 28, 28); labels: integer (M,) in 0..9.
    Each sample takes two *distinct* source images (indices i != j, drawn uniformly, pairs
    independently with replacement) and composes them with :func:`compose`.
    overlap: rows the two digits share (0..h); 14 on 28-row digits gives the 42-row canvas.
    rng: numpy Generator, int seed, or None (scratchnet's global generator); the same seed
    gives the same data.
    Returns ``(canvas, pair_labels)``: uint8 (n, 2h - overlap, w) and int64 (2, n) with
    ``pair_labels[0]`` the first (upper) digit and ``pair_labels[1]`` the second (lower); with
    ``return_indices`` also int64 (2, n) source indices into ``images``.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise TypeError(
            f"make_multidigit: expected uint8 images of shape (M, h, w), "
            f"got {images.dtype} of shape {images.shape}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(
            f"make_multidigit: expected integer labels of shape (M,), "
            f"got {labels.dtype} of shape {labels.shape}")
    if len(labels) != len(images):
        raise ValueError(
            f"make_multidigit: {len(images)} images but {len(labels)} labels")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"make_multidigit: n must be a non-negative int, got {n!r}")
    overlap = _check_overlap(overlap, images.shape[1])
    m = len(images)
    if n > 0 and m < 2:
        raise ValueError(
            f"make_multidigit: need at least 2 source images to pair distinct digits, got {m}")
    gen = _as_generator(rng)
    first = gen.integers(0, m, size=n) if n else np.zeros(0, dtype=np.int64)
    # an offset in 1..m-1 makes the second index uniform over the m - 1 others
    second = (first + gen.integers(1, m, size=n)) % m if n else np.zeros(0, dtype=np.int64)
    index = np.stack([first, second]).astype(np.int64)
    canvas = compose(images[index[0]], images[index[1]], overlap)
    pair_labels = labels[index].astype(np.int64)
    if return_indices:
        return canvas, pair_labels, index
    return canvas, pair_labels


def load_multidigit(split="train", seed=0, n_train=40000, n_test=4000,
                    overlap=DEFAULT_OVERLAP, data_dir=None):
    """Generate the two-digit dataset for ``split`` from MNIST, reproducibly from ``seed``.

    "train" draws ``n_train`` samples from MNIST's 60000 training digits, "test" ``n_test``
    from its 10000 test digits only, so no test digit is ever seen in training (the tutorial's
    sizes: 40000 and 4000). data_dir: where MNIST lives (see :func:`load_mnist`; None uses
    the shipped copy).
    Returns uint8 (n, 56 - overlap, 28) images (42 rows by default) and int64 (2, n) labels.
    """
    if split not in SPLITS:
        raise ValueError(f"load_multidigit: split must be 'train' or 'test', got {split!r}")
    digits, digit_labels = load_mnist(split, data_dir=data_dir)
    n = n_train if split == "train" else n_test
    return make_multidigit(digits, digit_labels, n, overlap=overlap,
                           rng=np.random.default_rng(seed))


def _as_uint8_images(images, where):
    """Validate stored images and return them as uint8 0..255.

    Integer images must lie in 0..255. Float images lie in [0, 1] (ToTensor's scale, turned
    back into 0..255 by rounding x * 255) or, when some value exceeds 1, in [0, 255] (rounded).
    """
    if images.dtype == np.uint8:
        return images
    if images.dtype == np.bool_ or not np.issubdtype(images.dtype, np.number) \
            or np.issubdtype(images.dtype, np.complexfloating):
        raise DataError(f"{where}: expected uint8 or float images, got {images.dtype}")
    if images.size == 0:
        return images.astype(np.uint8)
    if np.issubdtype(images.dtype, np.floating) and not np.all(np.isfinite(images)):
        raise DataError(f"{where}: images hold NaN or infinite values")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0 or hi > 255:
        raise DataError(f"{where}: pixel values must lie in [0, 255] (or [0, 1]), "
                        f"found {lo:g}..{hi:g}")
    if np.issubdtype(images.dtype, np.integer):
        return images.astype(np.uint8)
    scale = 255.0 if hi <= 1 else 1.0
    return np.rint(images.astype(np.float64) * scale).astype(np.uint8)


def _check_pair_shape(shape, n, where):
    if len(shape) != 2 or shape[0] != 2:
        raise DataError(
            f"{where}: expected labels of shape (2, N) (first digits, second digits), "
            f"got shape {tuple(shape)}")
    if shape[1] != n:
        raise DataError(
            f"{where}: image/label count mismatch: {n} images but {shape[1]} label pairs")


def _as_pair_labels(labels, n, where):
    """Validate stored labels: (2, n), integer-valued 0..9; returned as int64."""
    _check_pair_shape(labels.shape, n, where)
    if labels.dtype == np.bool_ or not (np.issubdtype(labels.dtype, np.integer)
                                        or np.issubdtype(labels.dtype, np.floating)):
        raise DataError(f"{where}: expected integer labels, got {labels.dtype}")
    if np.issubdtype(labels.dtype, np.floating):
        if not np.all(np.isfinite(labels)) or np.any(labels != np.rint(labels)):
            raise DataError(f"{where}: labels must be whole numbers 0..{NUM_CLASSES - 1}")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(
            f"{where}: labels must be 0..{NUM_CLASSES - 1}, found "
            f"{labels.min():g}..{labels.max():g}")
    return labels.astype(np.int64)


def _check_canvas(shape, where):
    """Raise DataError unless ``shape`` (of stored images, or declared) is (N, H, 28)."""
    shape = tuple(shape)
    if len(shape) != 3 or shape[2] != CANVAS_SHAPE[1] \
            or not CANVAS_SHAPE[1] <= shape[1] <= 2 * CANVAS_SHAPE[1]:
        raise DataError(
            f"{where}: expected images of shape (N, H, 28) with 28 <= H <= 56 "
            f"(42 for the default overlap), got shape {shape}")


def save_multidigit_npz(path, images, labels):
    """Write a two-digit dataset to ``path`` as ``.npz`` (``images``, ``labels``), atomically.

    images: (N, H, 28) uint8 (or float, stored as given); labels: (2, N) integers 0..9.
    The arrays go to a temporary file in the same folder, renamed over ``path`` only once
    complete, so a crash never leaves a half-written file. ``path`` is used as given (no
    ``.npz`` is appended).
    """
    path = os.fspath(path)
    images = np.asarray(images)
    labels = np.asarray(labels)
    where = f"save_multidigit_npz({path})"
    _check_canvas(images.shape, where)
    _as_uint8_images(images, where)
    _as_pair_labels(labels, len(images), where)
    atomic_write(path, lambda f: np.savez_compressed(f, images=images, labels=labels))


def load_multidigit_npz(path):
    """Read a two-digit dataset written by :func:`save_multidigit_npz` (no pickle allowed).

    The file holds ``images`` (N, H, 28) uint8 or float and ``labels`` (2, N).
    Returns uint8 (N, H, 28) images (see the float rule in the module docs: [0, 1] is scaled
    by 255) and int64 (2, N) labels. Raises DataError naming ``path`` when the file is
    missing, not a valid ``.npz``, truncated, lacks a key, or shapes/values are wrong.
    """
    path = os.fspath(path)
    headers = npz_headers(path)  # shapes first: nothing is allocated for a file that lies
    missing = [k for k in ("images", "labels") if k not in headers]
    if missing:
        raise DataError(
            f"{path}: missing array(s) {missing}; a two-digit .npz holds 'images' and "
            f"'labels' (found {sorted(headers)})")
    _check_canvas(headers["images"][0], path)
    _check_pair_shape(headers["labels"][0], headers["images"][0][0], path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            images = archive["images"]
            labels = archive["labels"]
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error, KeyError) as e:
        # a member damaged past its header: BadZipFile (CRC), zlib.error, EOFError
        raise DataError(f"{path}: not a readable two-digit .npz file ({e})") from None
    images = _as_uint8_images(images, path)
    labels = _as_pair_labels(labels, len(images), path)
    return images, labels


def tutorial_files(split="train", suffix=""):
    """The tutorial's file names for ``split``: (images ``.pkl.gz``, labels ``.txt.gz``).

    suffix: "" for the full set, "_mini" for the tutorial's small one.
    """
    if split not in SPLITS:
        raise ValueError(f"multidigit: split must be 'train' or 'test', got {split!r}")
    return f"{split}_multi_digit{suffix}.pkl.gz", f"{split}_labels{suffix}.txt.gz"


def load_multidigit_pkl(data_dir, split="train", suffix="", allow_pickle=False):
    """Read the tutorial's two files for ``split`` (see :func:`tutorial_files`) from ``data_dir``.

    The images file is a gzipped pickle of an array of N images of 42 x 28 (stored flat
    (N, 1176), as (N, 42, 28) or as (N, 1, 42, 28)); the labels file is gzipped text with two
    rows, the first digits and the second digits, as ``np.loadtxt`` reads it.
    allow_pickle: must be True, because unpickling runs whatever code the file names; only
    set it for files from a source you trust (then convert once with :func:`save_multidigit_npz`).
    Returns uint8 (N, 42, 28) images and int64 (2, N) labels; raises DataError on missing,
    corrupt or inconsistent files.
    """
    image_name, label_name = tutorial_files(split, suffix)
    image_path = os.path.join(os.fspath(data_dir), image_name)
    label_path = os.path.join(os.fspath(data_dir), label_name)
    if not allow_pickle:
        raise DataError(
            f"{image_path}: refusing to unpickle without allow_pickle=True: unpickling runs "
            f"arbitrary code named in the file, so only allow it for files you trust (and "
            f"convert them once to .npz with save_multidigit_npz)")
    for p in (image_path, label_path):
        if not os.path.isfile(p):
            raise DataError(f"{p}: no such file (the tutorial's two-digit {split} files are "
                            f"{image_name} and {label_name})")
    try:
        with gzip.open(image_path, "rb") as f:
            images = pickle.load(f, encoding="latin1")
    except Exception as e:  # unpickling can raise anything; report it as a bad file
        raise DataError(f"{image_path}: not a readable gzipped pickle "
                        f"({type(e).__name__}: {e})") from None
    try:
        images = np.asarray(images)
    except Exception as e:
        raise DataError(f"{image_path}: the pickle does not hold an image array ({e})") from None
    per_image = CANVAS_SHAPE[0] * CANVAS_SHAPE[1]
    if images.ndim not in (2, 3, 4) or int(np.prod(images.shape[1:])) != per_image:
        raise DataError(
            f"{image_path}: expected N images of 42 x 28 (shape (N, 1176), (N, 42, 28) or "
            f"(N, 1, 42, 28)), got shape {images.shape}")
    images = images.reshape((len(images),) + CANVAS_SHAPE)
    images = _as_uint8_images(images, image_path)
    try:
        with gzip.open(label_path, "rt") as f:
            labels = np.loadtxt(f, ndmin=2)
    except (OSError, EOFError, ValueError, zlib.error, UnicodeDecodeError) as e:
        raise DataError(f"{label_path}: not a readable gzipped label text file ({e})") from None
    labels = _as_pair_labels(labels, len(images), label_path)
    return images, labels


def npz_file(split="train", suffix=""):
    """Our ``.npz`` file name for ``split`` in a data folder: ``{split}_multi_digit{suffix}.npz``,
    beside the tutorial's ``{split}_multi_digit{suffix}.pkl.gz``."""
    if split not in SPLITS:
        raise ValueError(f"multidigit: split must be 'train' or 'test', got {split!r}")
    return f"{split}_multi_digit{suffix}.npz"


def find_multidigit_files(data_dir, split="train"):
    """Which two-digit files ``data_dir`` holds for ``split``, or None.

    Looks for our ``.npz`` first, then the tutorial's ``.pkl.gz`` + ``.txt.gz`` pair, each
    for the full set before the tutorial's ``_mini`` one. Returns ``(kind, suffix, path)``:
    kind "npz" or "pkl", path the images file.
    """
    data_dir = os.fspath(data_dir)
    for suffix in ("", "_mini"):
        path = os.path.join(data_dir, npz_file(split, suffix))
        if os.path.isfile(path):
            return "npz", suffix, path
        image_name, label_name = tutorial_files(split, suffix)
        path = os.path.join(data_dir, image_name)
        if os.path.isfile(path) or os.path.isfile(os.path.join(data_dir, label_name)):
            return "pkl", suffix, path
    return None


def load_multidigit_dir(data_dir, split="train", allow_pickle=False):
    """Read ``split`` of a two-digit dataset stored in ``data_dir`` (see
    :func:`find_multidigit_files` for the names looked for).

    The tutorial's pickle is read only with ``allow_pickle=True`` (unpickling runs code).
    Returns ``(images, labels, path)``: uint8 (N, H, 28), int64 (2, N), and the file read.
    Raises DataError when the folder holds no two-digit files for ``split``.
    """
    found = find_multidigit_files(data_dir, split)
    if found is None:
        image_name, label_name = tutorial_files(split)
        raise DataError(
            f"{data_dir}: no two-digit {split} files: expected {npz_file(split)} (written by "
            f"save_multidigit_npz) or the tutorial's {image_name} and {label_name} (or their "
            f"_mini versions)")
    kind, suffix, path = found
    if kind == "npz":
        images, labels = load_multidigit_npz(path)
    else:
        images, labels = load_multidigit_pkl(data_dir, split, suffix, allow_pickle=allow_pickle)
    return images, labels, path
