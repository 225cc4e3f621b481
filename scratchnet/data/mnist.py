"""load_mnist: MNIST (shipped with scratchnet) and Fashion-MNIST as numpy arrays."""
import os

import numpy as np

from .checksums import verify_sha256
from .download import download_mnist
from .errors import DataError
from .idx import read_idx, read_idx_header
from .resources import dataset_spec, split_files

IMAGE_SIZE = (28, 28)
NUM_CLASSES = 10


def _search_dirs(data_dir, spec):
    """Folders that may hold the files: ``data_dir`` itself, then torchvision's layout."""
    return [data_dir, os.path.join(data_dir, spec["folder"], "raw")]


def _find_file(folder, base):
    """Path of ``base`` in ``folder``, uncompressed preferred (faster), else ``base.gz``."""
    for name in (base, base + ".gz"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def _find_split(folders, bases):
    """(images, labels) paths from the first folder that holds both, or None."""
    for folder in folders:
        paths = [_find_file(folder, base) for base in bases]
        if all(paths):
            return paths
    return None


def _not_found(dataset, split, folders, bases, data_dir, spec):
    """DataError saying where we looked and how to get the files."""
    wanted = " and ".join(f"{b}[.gz]" for b in bases)
    looked = ", ".join(folders)
    if data_dir is None:
        hint = f"{spec['install_hint']}, or pass data_dir=DIR (with download=True, or --download on the command line, to fetch it)"
    elif not os.path.isdir(data_dir):
        looked = f"{data_dir} (which does not exist)"
        hint = "check the path, or pass download=True (--download on the command line) to fetch the files into it"
    else:
        hint = "put the four files there, or pass download=True (--download on the command line) to fetch them"
    return DataError(f"{dataset} {split} files not found: looked for {wanted} in {looked}; {hint}")


def _check_headers(image_path, label_path):
    """Raise DataError unless the two files' headers declare a valid MNIST-style split.

    Only the headers are read: a file declaring far more images than its partner has labels
    is refused before either is decompressed.
    """
    (image_shape, image_dtype), (label_shape, label_dtype) = (
        read_idx_header(image_path), read_idx_header(label_path))
    if image_dtype != np.uint8 or len(image_shape) != 3 or image_shape[1:] != IMAGE_SIZE:
        raise DataError(
            f"{image_path}: expected uint8 images of shape (N, 28, 28), "
            f"got {image_dtype} of shape {image_shape}")
    if label_dtype != np.uint8 or len(label_shape) != 1:
        raise DataError(
            f"{label_path}: expected uint8 labels of shape (N,), "
            f"got {label_dtype} of shape {label_shape}")
    if image_shape[0] != label_shape[0]:
        raise DataError(
            f"image/label count mismatch: {image_path} holds {image_shape[0]} images but "
            f"{label_path} holds {label_shape[0]} labels")


def load_mnist(split="train", data_dir=None, dataset="mnist", download=False):
    """Load one split of MNIST or Fashion-MNIST.

    Returns ``(images, labels)``: images uint8 (N, 28, 28) with values 0..255, labels int64
    (N,) with values 0..9; N is 60000 for "train" and 10000 for "test".

    split: "train" or "test". dataset: "mnist" or "fashion-mnist".
    data_dir: None for the default copy (MNIST: the one shipped inside scratchnet, whose
    SHA-256 is checked against its SHA256SUMS on every load; Fashion-MNIST: Debian's
    dataset-fashion-mnist package in /usr/share/datasets/fashion-mnist). Otherwise a folder
    holding the files (``.gz`` or uncompressed) directly or in torchvision's layout
    ``data_dir/MNIST/raw/`` / ``data_dir/FashionMNIST/raw/``.
    download: when the files are not in ``data_dir``, fetch them there (see download_mnist).

    Raises DataError (a ValueError) when files are missing, damaged or inconsistent.
    """
    spec = dataset_spec(dataset)
    bases = split_files(split)
    if data_dir is None:
        folders = [spec["default_dir"]]
    else:
        data_dir = os.fspath(data_dir)
        folders = _search_dirs(data_dir, spec)
    paths = _find_split(folders, bases)
    if paths is None and download:
        if data_dir is None:
            raise DataError(
                f"the default {dataset} copy is missing from {spec['default_dir']} and "
                f"download=True needs a place to put it: pass data_dir=DIR")
        download_mnist(data_dir, dataset=dataset)
        paths = _find_split(folders, bases)
    if paths is None:
        raise _not_found(dataset, split, folders, bases, data_dir, spec)
    image_path, label_path = paths
    if data_dir is None and dataset == "mnist":
        sums = os.path.join(spec["default_dir"], "SHA256SUMS")
        verify_sha256(image_path, sums)
        verify_sha256(label_path, sums)
    _check_headers(image_path, label_path)
    labels = read_idx(label_path)
    if labels.size and labels.max() >= NUM_CLASSES:
        raise DataError(
            f"{label_path}: labels must be 0..{NUM_CLASSES - 1}, found {int(labels.max())}")
    return read_idx(image_path), labels.astype(np.int64)
