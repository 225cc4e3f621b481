"""Data: the IDX reader, MNIST (shipped) and Fashion-MNIST loading, preprocessing, batching.

    images, labels = load_mnist("train")                 # uint8 (60000, 28, 28), int64 (60000,)
    x = normalize(images, MNIST_MEAN, MNIST_STD, input_shape=(1, 28, 28))
    for xb, yb in batches(x, labels, 64, shuffle=True, rng=0):
        ...
"""
from .download import download_mnist
from .errors import DataError
from .idx import read_idx
from .loader import DataLoader, batches, normalize, train_val_split
from .mnist import load_mnist
from .multidigit import (load_multidigit, load_multidigit_npz, load_multidigit_pkl,
                         make_multidigit, save_multidigit_npz)
from .resources import DATASETS

MNIST_MEAN = DATASETS["mnist"]["mean"]
MNIST_STD = DATASETS["mnist"]["std"]
FASHION_MNIST_MEAN = DATASETS["fashion-mnist"]["mean"]
FASHION_MNIST_STD = DATASETS["fashion-mnist"]["std"]

__all__ = [
    "DataError", "read_idx", "load_mnist", "download_mnist",
    "normalize", "train_val_split", "DataLoader", "batches", "DATASETS",
    "load_multidigit", "load_multidigit_npz", "load_multidigit_pkl", "make_multidigit",
    "save_multidigit_npz",
    "MNIST_MEAN", "MNIST_STD", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD",
]
