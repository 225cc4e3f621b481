"""scratchnet.data: IDX reader, shipped MNIST, Fashion-MNIST, download, preprocessing, batching.

Dataset facts (shapes, first labels, label counts, pixel statistics) are MNIST's published
ones; the preprocessing, split sizes and batch sizes are compared with torch. Downloads only ever talk to
servers started here on 127.0.0.1.
"""
import functools
import gzip
import hashlib
import http.server
import os
import shutil
import socket
import threading
import warnings

import numpy as np
import pytest
import torch

from scratchnet import random as sn_random
from scratchnet.data import (DataError, DataLoader, MNIST_MEAN, MNIST_STD, batches,
                             download_mnist, load_mnist, normalize, read_idx, train_val_split)
from scratchnet.data.download import verify_download
from scratchnet.data.resources import DATASETS, SHIPPED_MNIST_DIR
from tests.helpers import assert_close

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
needs_fashion = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FASHION_DIR, TEST_IMAGES + ".gz")),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def write_idx(path, array, code=0x08, compress=None):
    """Write ``array`` as an IDX file (big-endian), gzipped when the name ends in .gz."""
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    array = np.asarray(array)
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    data = header + array.astype(dtypes[code]).tobytes()
    if compress if compress is not None else str(path).endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def write_split(folder, n_images, n_labels, split_names=(TEST_IMAGES, TEST_LABELS)):
    """A tiny synthetic split: ``n_images`` 28x28 images and ``n_labels`` labels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    write_idx(folder / split_names[0], rng.integers(0, 256, (n_images, 28, 28)))
    write_idx(folder / split_names[1], rng.integers(0, 10, n_labels), code=0x08)
    return folder


@pytest.fixture(scope="module")
def mnist_train():
    return load_mnist("train")


@pytest.fixture(scope="module")
def mnist_test():
    return load_mnist("test")


# ---- the shipped MNIST copy against MNIST's published facts

def test_shipped_mnist_shapes_and_first_labels(mnist_train, mnist_test):
    (xtr, ytr), (xte, yte) = mnist_train, mnist_test
    assert xtr.shape == (60000, 28, 28) and xtr.dtype == np.uint8
    assert ytr.shape == (60000,) and ytr.dtype == np.int64
    assert xte.shape == (10000, 28, 28) and yte.shape == (10000,)
    assert ytr[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert yte[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert xtr.flags.writeable and xtr.min() == 0 and xtr.max() == 255


def test_shipped_mnist_label_counts_and_pixel_stats(mnist_train):
    images, labels = mnist_train
    counts = np.bincount(labels, minlength=10).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    # exact integer sums: far faster than a float copy of 47M pixels (255**2 fits in uint16)
    m = images.size
    total = images.sum(dtype=np.int64)
    squares = (images.astype(np.uint16) ** 2).sum(dtype=np.int64)
    mean = total / m / 255
    std = np.sqrt(squares / m / 255**2 - mean**2)
    assert round(mean, 4) == 0.1307 == MNIST_MEAN
    assert round(std, 4) == 0.3081 == MNIST_STD


@pytest.mark.parametrize("name, md5", [
    (TRAIN_IMAGES, "6bbc9ace898e44ae57da46a324031adb"),
    (TRAIN_LABELS, "a25bea736e30d166cdddb491f175f624"),
    (TEST_IMAGES, "2646ac647ad5339dbf082846283269ea"),
    (TEST_LABELS, "27ae3e4e09519cfbb04c329615203637"),
])
def test_shipped_mnist_uncompressed_md5(name, md5):
    with gzip.open(os.path.join(SHIPPED_MNIST_DIR, name + ".gz"), "rb") as f:
        assert hashlib.md5(f.read()).hexdigest() == md5
    assert DATASETS["mnist"]["content_md5"][name] == md5


def test_raw_and_gz_load_the_same(tmp_path, mnist_test):
    for name in (TEST_IMAGES, TEST_LABELS):
        with gzip.open(os.path.join(SHIPPED_MNIST_DIR, name + ".gz"), "rb") as f:
            (tmp_path / name).write_bytes(f.read())
    images, labels = load_mnist("test", data_dir=tmp_path)
    np.testing.assert_array_equal(images, mnist_test[0])
    np.testing.assert_array_equal(labels, mnist_test[1])
    assert labels.dtype == np.int64


def test_torchvision_layout(tmp_path, mnist_test):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in (TEST_IMAGES, TEST_LABELS):
        shutil.copy(os.path.join(SHIPPED_MNIST_DIR, name + ".gz"), raw)
    images, labels = load_mnist("test", data_dir=str(tmp_path))
    np.testing.assert_array_equal(images, mnist_test[0])
    np.testing.assert_array_equal(labels, mnist_test[1])


def test_fashion_torchvision_layout_synthetic(tmp_path):
    write_split(tmp_path / "FashionMNIST" / "raw", 3, 3)
    images, labels = load_mnist("test", data_dir=tmp_path, dataset="fashion-mnist")
    assert images.shape == (3, 28, 28) and labels.shape == (3,)


def test_unknown_split_or_dataset():
    with pytest.raises(ValueError, match="split"):
        load_mnist("validation")
    with pytest.raises(ValueError, match="dataset"):
        load_mnist("test", dataset="kmnist")


# ---- IDX reader: every supported type round-trips, every kind of damage is a DataError

@pytest.mark.parametrize("code, dtype", [
    (0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16),
    (0x0C, np.int32), (0x0D, np.float32), (0x0E, np.float64)])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trip(tmp_path, code, dtype, suffix):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    out = read_idx(write_idx(tmp_path / f"a{suffix}", array, code=code))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_read_idx_detects_gzip_by_content(tmp_path):
    path = write_idx(tmp_path / "labels", np.arange(5), compress=True)
    np.testing.assert_array_equal(read_idx(path), np.arange(5))


def test_truncated_file(tmp_path):
    path = write_idx(tmp_path / "images", np.zeros((4, 28, 28)))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"truncated.*expected 3152 bytes, got 3052") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_truncated_header_and_trailing_bytes(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(DataError, match="truncated IDX header: expected 16 bytes"):
        read_idx(path)
    path = write_idx(tmp_path / "long", np.zeros(3))
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(DataError, match="too long.*expected 11 bytes, got 12"):
        read_idx(path)


def test_wrong_magic(tmp_path):
    path = tmp_path / "not-idx"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(DataError, match="wrong magic number 0x504b0304") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_unsupported_dtype_code(tmp_path):
    path = tmp_path / "odd"
    path.write_bytes(bytes([0, 0, 0x0A, 1, 0, 0, 0, 1, 7]))
    with pytest.raises(DataError, match="unsupported IDX dtype code 0x0A"):
        read_idx(path)


def test_corrupt_gzip(tmp_path):
    garbage = tmp_path / "garbage.gz"
    garbage.write_bytes(b"this is not gzip at all")
    with pytest.raises(DataError, match="corrupt gzip") as e:
        read_idx(garbage)
    assert str(garbage) in str(e.value)
    cut = tmp_path / "cut.gz"
    cut.write_bytes(open(os.path.join(SHIPPED_MNIST_DIR, TEST_LABELS + ".gz"), "rb").read()[:2000])
    with pytest.raises(DataError, match="corrupt gzip"):
        read_idx(cut)


def test_missing_file():
    with pytest.raises(DataError, match="no such IDX file"):
        read_idx("/nonexistent/file-idx1-ubyte")


# ---- dataset-level errors

def test_count_mismatch(tmp_path):
    write_split(tmp_path, n_images=5, n_labels=4)
    with pytest.raises(DataError, match="count mismatch.*5 images.*4 labels") as e:
        load_mnist("test", data_dir=tmp_path)
    assert TEST_IMAGES in str(e.value) and TEST_LABELS in str(e.value)


def test_wrong_image_shape_and_label_range(tmp_path):
    write_idx(tmp_path / TEST_IMAGES, np.zeros((2, 14, 14)))
    write_idx(tmp_path / TEST_LABELS, np.zeros(2))
    with pytest.raises(DataError, match=r"shape \(N, 28, 28\).*\(2, 14, 14\)"):
        load_mnist("test", data_dir=tmp_path)
    write_split(tmp_path, 2, 2)
    write_idx(tmp_path / TEST_LABELS, np.array([3, 12]))
    with pytest.raises(DataError, match="labels must be 0..9, found 12"):
        load_mnist("test", data_dir=tmp_path)


def test_missing_data_dir(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="does not exist") as e:
        load_mnist("train", data_dir=missing)
    message = str(e.value)
    assert str(missing) in message and TRAIN_IMAGES in message and "download=True" in message


def test_missing_file_in_existing_dir(tmp_path):
    write_idx(tmp_path / TEST_IMAGES, np.zeros((1, 28, 28)))
    with pytest.raises(DataError, match="not found") as e:
        load_mnist("test", data_dir=tmp_path)
    message = str(e.value)
    assert str(tmp_path) in message and os.path.join("MNIST", "raw") in message
    assert TEST_LABELS in message and "download=True" in message


def test_missing_default_copy(tmp_path, monkeypatch):
    monkeypatch.setitem(DATASETS["fashion-mnist"], "default_dir", str(tmp_path / "absent"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_mnist("test", dataset="fashion-mnist")
    with pytest.raises(DataError, match="pass data_dir"):
        load_mnist("test", dataset="fashion-mnist", download=True)


def test_shipped_checksum_mismatch(tmp_path, monkeypatch):
    shutil.copy(os.path.join(SHIPPED_MNIST_DIR, "SHA256SUMS"), tmp_path)
    shutil.copy(os.path.join(SHIPPED_MNIST_DIR, TEST_IMAGES + ".gz"), tmp_path)
    data = bytearray(open(os.path.join(SHIPPED_MNIST_DIR, TEST_LABELS + ".gz"), "rb").read())
    data[-20] ^= 0xFF
    (tmp_path / (TEST_LABELS + ".gz")).write_bytes(bytes(data))
    monkeypatch.setitem(DATASETS["mnist"], "default_dir", str(tmp_path))
    with pytest.raises(DataError, match="SHA-256 mismatch") as e:
        load_mnist("test")
    assert TEST_LABELS in str(e.value)


# ---- Fashion-MNIST from Debian's dataset-fashion-mnist (skipped when not installed)

@needs_fashion
def test_fashion_mnist_default_location():
    images, labels = load_mnist("test", dataset="fashion-mnist")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    # Fashion-MNIST is balanced: 1000 test images per class
    assert np.bincount(labels, minlength=10).tolist() == [1000] * 10
    for name in (TEST_IMAGES, TEST_LABELS):
        verify_download(os.path.join(FASHION_DIR, name + ".gz"), "fashion-mnist", name)


# ---- download, from servers on 127.0.0.1 only

@pytest.fixture
def serve(monkeypatch):
    """serve(folder) -> base URL of an HTTP server on 127.0.0.1 serving ``folder``."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    servers = []

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    def start(folder):
        handler = functools.partial(Quiet, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def leftovers(folder):
    return [name for name in os.listdir(folder) if name.endswith(".part")]


def test_download_from_local_mirror(tmp_path, serve, mnist_test):
    url = serve(SHIPPED_MNIST_DIR)
    raw = download_mnist(tmp_path / "data", mirrors=[url], timeout=5)
    assert raw == str(tmp_path / "data" / "MNIST" / "raw")
    assert sorted(os.listdir(raw)) == sorted(
        n + ".gz" for n in (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS))
    images, labels = load_mnist("test", data_dir=tmp_path / "data")
    np.testing.assert_array_equal(images, mnist_test[0])
    np.testing.assert_array_equal(labels, mnist_test[1])
    # verified files already there are kept: a dead mirror is never contacted
    download_mnist(tmp_path / "data", mirrors=["http://127.0.0.1:9/"], timeout=5)


def test_download_rejects_corrupt_file(tmp_path, serve):
    mirror = tmp_path / "mirror"
    shutil.copytree(SHIPPED_MNIST_DIR, mirror)
    data = bytearray((mirror / (TRAIN_LABELS + ".gz")).read_bytes())
    data[100] ^= 0xFF
    (mirror / (TRAIN_LABELS + ".gz")).write_bytes(bytes(data))
    url = serve(mirror)
    with pytest.raises(DataError, match="checksum mismatch") as e:
        download_mnist(tmp_path / "data", mirrors=[url], timeout=5)
    assert url + TRAIN_LABELS + ".gz" in str(e.value)
    raw = tmp_path / "data" / "MNIST" / "raw"
    assert not (raw / (TRAIN_LABELS + ".gz")).exists()
    assert leftovers(raw) == []


def test_download_accepts_recompressed_file(tmp_path):
    # same content, other gzip bytes: the .gz digests differ but the content MD5 matches
    with gzip.open(os.path.join(SHIPPED_MNIST_DIR, TEST_LABELS + ".gz"), "rb") as f:
        content = f.read()
    path = tmp_path / (TEST_LABELS + ".gz")
    path.write_bytes(gzip.compress(content, compresslevel=1, mtime=1))
    verify_download(str(path), "mnist", TEST_LABELS)
    path.write_bytes(gzip.compress(content[:-1] + b"\x07", mtime=1))
    with pytest.raises(DataError, match="checksum mismatch"):
        verify_download(str(path), "mnist", TEST_LABELS)


def test_download_falls_back_to_next_mirror(tmp_path, serve):
    empty = tmp_path / "empty"
    empty.mkdir()
    dead, good = serve(empty), serve(SHIPPED_MNIST_DIR)
    download_mnist(tmp_path / "data", mirrors=[dead, good], timeout=5)
    with pytest.raises(DataError, match="HTTP 404") as e:
        download_mnist(tmp_path / "other", mirrors=[dead, dead.rstrip("/")], timeout=5)
    assert str(e.value).count("HTTP 404") == 2


def test_download_times_out(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    # a socket that accepts connections (kernel backlog) but never answers
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        with pytest.raises(DataError, match="timed out after 0.2 s"):
            download_mnist(tmp_path, mirrors=[url], timeout=0.2)
    assert leftovers(tmp_path / "MNIST" / "raw") == []


def test_load_downloads_when_asked(tmp_path, serve, monkeypatch, mnist_test):
    monkeypatch.setitem(DATASETS["mnist"], "mirrors", (serve(SHIPPED_MNIST_DIR),))
    with pytest.raises(DataError, match="not found"):
        load_mnist("test", data_dir=tmp_path)
    images, labels = load_mnist("test", data_dir=tmp_path, download=True)
    np.testing.assert_array_equal(labels, mnist_test[1])
    assert (tmp_path / "MNIST" / "raw" / (TEST_IMAGES + ".gz")).is_file()


# ---- preprocessing: the same expression as torchvision's ToTensor + Normalize, in torch

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stats", [(None, None), (0.1307, 0.3081)])
@pytest.mark.parametrize("input_shape", [None, (1, 28, 28), (784,)])
def test_normalize_matches_torch(mnist_test, dtype, stats, input_shape):
    images = mnist_test[0][:257]
    ours = normalize(images, *stats, dtype=dtype, input_shape=input_shape)
    t = torch.from_numpy(images).to({np.float32: torch.float32, np.float64: torch.float64}[dtype])
    t = t.div(255)
    if stats[0] is not None:
        t = t.sub(torch.tensor(stats[0], dtype=t.dtype)).div(torch.tensor(stats[1], dtype=t.dtype))
    if input_shape is not None:
        t = t.reshape((len(images),) + input_shape)
    assert ours.dtype == dtype and ours.shape == tuple(t.shape)
    assert_close(ours, t, dtype, name="normalize")


def test_normalize_empty_and_single():
    assert normalize(np.zeros((0, 28, 28), np.uint8), input_shape=(784,)).shape == (0, 784)
    one = normalize(np.full((1, 28, 28), 255, np.uint8), input_shape=(1, 28, 28))
    assert one.shape == (1, 1, 28, 28) and np.all(one == 1)


def test_normalize_validation():
    images = np.zeros((2, 28, 28), np.uint8)
    with pytest.raises(ValueError, match=r"input_shape \(1, 32, 32\).*784 values"):
        normalize(images, input_shape=(1, 32, 32))
    with pytest.raises(TypeError, match="expected uint8"):
        normalize(images.astype(np.float32))
    with pytest.raises(ValueError, match="both mean and std"):
        normalize(images, mean=0.5)
    with pytest.raises(TypeError, match="float32 or float64"):
        normalize(images, dtype=np.int32)


# ---- split and batches: sizes against torch.utils.data, determinism from the seed

@pytest.mark.parametrize("n", [0, 1, 7, 10, 101, 60000])
@pytest.mark.parametrize("val_fraction", [0.0, 0.1, 0.25, 1 / 3, 0.5, 1.0])
def test_train_val_split_sizes_match_torch(n, val_fraction):
    train_idx, val_idx = train_val_split(n, val_fraction, rng=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about empty splits, which we allow
        expected = torch.utils.data.random_split(range(n), [1 - val_fraction, val_fraction])
    assert (len(train_idx), len(val_idx)) == tuple(len(s) for s in expected)
    assert sorted(np.concatenate([train_idx, val_idx]).tolist()) == list(range(n))


def test_train_val_split_is_seeded():
    a = train_val_split(1000, 0.2, rng=42)
    b = train_val_split(1000, 0.2, rng=np.random.default_rng(42))
    c = train_val_split(1000, 0.2, rng=43)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    sn_random.manual_seed(5)
    d = train_val_split(1000, 0.2)
    sn_random.manual_seed(5)
    np.testing.assert_array_equal(d[1], train_val_split(1000, 0.2)[1])
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(10, 1.5)


@pytest.mark.parametrize("n", [0, 1, 7, 10])
@pytest.mark.parametrize("batch_size", [1, 3, 10, 11])
@pytest.mark.parametrize("drop_last", [False, True])
def test_batch_sizes_match_torch_dataloader(n, batch_size, drop_last):
    images, labels = np.arange(n * 4).reshape(n, 2, 2), np.arange(n)
    ours = batches(images, labels, batch_size, drop_last=drop_last)
    theirs = torch.utils.data.DataLoader(range(n), batch_size=batch_size, drop_last=drop_last)
    assert len(ours) == len(theirs)
    assert [len(y) for _, y in ours] == [len(b) for b in theirs]
    # no shuffle: the original order, the images still paired with their labels
    seen = [y for _, y in ours]
    expected = [b.numpy() for b in theirs]
    for got, want in zip(seen, expected):
        np.testing.assert_array_equal(got, want)
    for x, y in ours:
        np.testing.assert_array_equal(x, images[y])


def test_shuffled_batches_are_seeded():
    images, labels = np.arange(103 * 3).reshape(103, 3), np.arange(103)

    def epochs(loader, count=2):
        return [[y.copy() for _, y in loader] for _ in range(count)]

    a = epochs(batches(images, labels, 10, shuffle=True, rng=7))
    b = epochs(DataLoader(images, labels, 10, shuffle=True, rng=np.random.default_rng(7)))
    for ea, eb in zip(a, b):
        for ya, yb in zip(ea, eb):
            np.testing.assert_array_equal(ya, yb)
    # each epoch is a permutation of all samples, and the two epochs differ
    assert sorted(np.concatenate(a[0]).tolist()) == list(range(103))
    assert not np.array_equal(np.concatenate(a[0]), np.concatenate(a[1]))
    assert not np.array_equal(np.concatenate(a[0]), labels)
    dropped = list(batches(images, labels, 10, shuffle=True, rng=7, drop_last=True))
    assert len(dropped) == 10 and all(len(y) == 10 for _, y in dropped)
    for x, y in batches(images, labels, 10, shuffle=True, rng=1):
        np.testing.assert_array_equal(x, images[y])


def test_batches_use_global_generator_when_no_rng():
    images, labels = np.zeros((20, 1)), np.arange(20)
    loader = batches(images, labels, 4, shuffle=True)
    sn_random.manual_seed(11)
    first = np.concatenate([y for _, y in loader])
    sn_random.manual_seed(11)
    np.testing.assert_array_equal(first, np.concatenate([y for _, y in loader]))


def test_batches_validation():
    with pytest.raises(ValueError, match="differ in length: 3 vs 2"):
        batches(np.zeros((3, 1)), np.zeros(2), 1)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        batches(np.zeros((3, 1)), np.zeros(3), 0)
