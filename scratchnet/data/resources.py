"""What is known about each dataset: file names, where copies live, mirrors and checksums."""
import os

# base file names, without .gz; "train" and "test" as torchvision's train=True/False
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

SHIPPED_MNIST_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist")

DATASETS = {
    "mnist": {
        # torchvision downloads into ROOT/MNIST/raw/
        "folder": "MNIST",
        # torchvision's mirrors, the one that still answers first
        "mirrors": (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        # torchvision's MD5s of the upstream .gz files
        "gz_md5": {
            "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        # MD5s of the uncompressed files (the ones usually quoted for MNIST): they survive
        # recompression, which changes the .gz bytes (the copy shipped here is recompressed)
        "content_md5": {
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
        "default_dir": SHIPPED_MNIST_DIR,
        "install_hint": "reinstall scratchnet (its wheel ships MNIST)",
        "classes": ("0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
                    "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine"),
        # mean and std of the training pixels scaled to [0, 1], as in PyTorch's MNIST example
        "mean": 0.1307,
        "std": 0.3081,
    },
    "fashion-mnist": {
        "folder": "FashionMNIST",
        "mirrors": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        "gz_md5": {
            "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        # MD5s of the uncompressed files as installed by Debian's dataset-fashion-mnist
        # (Debian recompressed the .gz files, so their MD5s differ from the upstream ones)
        "content_md5": {
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
        # Debian's dataset-fashion-mnist package installs the four .gz files here
        "default_dir": "/usr/share/datasets/fashion-mnist",
        "install_hint": "install it with `apt-get install dataset-fashion-mnist`",
        "classes": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        "mean": 0.2860,
        "std": 0.3530,
    },
}


def dataset_spec(dataset):
    """The DATASETS entry for ``dataset``; ValueError listing the known names otherwise."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[dataset]


def split_files(split):
    """(images, labels) base file names for ``split`` ("train" or "test")."""
    if split not in FILES:
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    return FILES[split]
