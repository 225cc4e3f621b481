"""The images and labels a run's config names, ready for its model.

A config (see :mod:`.settings`) names ``dataset`` (``mnist``, ``fashion-mnist`` or
``two-digit``), ``data_dir`` and, for two digits, how the canvases are made or where they are.
"""
import numpy as np

from ..data import DATASETS, DataError, load_mnist, multidigit, normalize, train_val_split
from .settings import TWO_DIGIT_DATASET


def _two_digit_files(config, split):
    """(kind, suffix, path) of the two-digit files in config's data_dir for ``split``, or None."""
    if config.get("data_dir") is None:
        return None
    return multidigit.find_multidigit_files(config["data_dir"], split)


def _load_two_digit(split, config):
    """Two-digit (images (N, 42, 28), labels (N, 2)): read from files in data_dir when it holds
    them, else generated from MNIST (data_dir's IDX files, or the shipped copy)."""
    data_dir, found = config.get("data_dir"), _two_digit_files(config, split)
    if found is not None:
        kind, _, path = found
        if kind == "pkl" and not config.get("allow_pickle"):
            raise DataError(
                f"{path}: the tutorial's two-digit images are a Python pickle, and unpickling "
                f"runs whatever code the file names; pass allow_pickle=True only if you trust "
                f"the file (or convert it once to .npz with scratchnet.data.save_multidigit_npz)")
        images, labels, _ = multidigit.load_multidigit_dir(data_dir, split, allow_pickle=True)
    else:
        path = f"the {split} set generated from MNIST"
        try:
            images, labels = multidigit.load_multidigit(
                split, seed=config["data_seed"], n_train=config["n_train"],
                n_test=config["n_test"], data_dir=data_dir)
        except DataError as e:
            if data_dir is None:
                raise
            image_name, label_name = multidigit.tutorial_files(split)
            raise DataError(
                f"{data_dir}: holds no two-digit {split} files ({multidigit.npz_file(split)}, "
                f"or the tutorial's {image_name} and {label_name}) and no MNIST files to "
                f"generate them from ({e})") from None
    if images.shape[1:] != multidigit.CANVAS_SHAPE:
        raise DataError(f"{path}: the two-digit models read 42 x 28 images, got "
                        f"{images.shape[1]} x {images.shape[2]}")
    return images, np.ascontiguousarray(labels.T)  # (N, 2): one row per sample, for batches


def describe(config, split):
    """Where ``split`` comes from, for messages: "mnist", "two-digit (from FILE)", ..."""
    if config["dataset"] != TWO_DIGIT_DATASET:
        return config["dataset"]
    found = _two_digit_files(config, split)
    if found is not None:
        return f"two-digit (from {found[2]})"
    return f"two-digit (generated from MNIST, data seed {config['data_seed']})"


def load(split, config, limit=None):
    """uint8 images and int64 labels of ``split``; DataError when there are none."""
    if config["dataset"] == TWO_DIGIT_DATASET:
        images, labels = _load_two_digit(split, config)
    else:
        images, labels = load_mnist(split, data_dir=config.get("data_dir"),
                                    dataset=config["dataset"],
                                    download=config.get("download", False))
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    if not len(labels):
        raise DataError(f"the {describe(config, split)} {split} set holds no images: nothing "
                        f"to {'train on' if split == 'train' else 'test'}")
    return images, labels


def inputs(images, model, normalization):
    """uint8 images -> the model's float input: scaled to [0, 1], then (x - mean) / std."""
    mean, std = normalization if normalization else (None, None)
    return normalize(images, mean, std, dtype=model.dtype, input_shape=model.input_shape)


def train_and_val(config, model):
    """(x, y) for training and for validation (None without a split), model-ready."""
    images, labels = load("train", config, config["limit_train"])
    # its own stream from the seed, apart from the weights/dropout and shuffling ones
    train_idx, val_idx = train_val_split(len(labels), config["val_split"],
                                         rng=np.random.default_rng([config["seed"], 2]))
    if not len(train_idx):
        raise DataError(f"no training images left: val_split={config['val_split']} holds out "
                        f"all {len(labels)} of them")
    train = (inputs(images[train_idx], model, config["normalize"]), labels[train_idx])
    if not len(val_idx):
        return train, None
    return train, (inputs(images[val_idx], model, config["normalize"]), labels[val_idx])


def classes(dataset):
    """Class names to print and plot for ``dataset``, or None where the digits say it all."""
    return None if dataset in ("mnist", TWO_DIGIT_DATASET) else DATASETS[dataset]["classes"]
