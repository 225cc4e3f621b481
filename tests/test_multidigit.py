"""Two-digit MNIST: the generator, its file formats, the two-head models and loss against torch."""
import gzip
import os
import pathlib
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import scratchnet as sn
from reference import convert
from reference import multidigit as ref_multidigit
from scratchnet.data import DataError, load_mnist
from scratchnet.data.multidigit import (compose, load_multidigit, load_multidigit_npz,
                                        load_multidigit_pkl, make_multidigit,
                                        save_multidigit_npz, tutorial_files)
from scratchnet.models.multidigit import (MultiCNN, MultiMLP, TwoDigitLoss, TwoHeads,
                                          split_pair_labels)
from tests.helpers import (BACKENDS, DTYPES, TORCH_DTYPE, WEIGHT_SEED, assert_close,
                           break_ties)

MODELS = {"multimlp": MultiMLP, "multicnn": MultiCNN}


@pytest.fixture(scope="module")
def mnist_test():
    return load_mnist("test")


def unique_digits(m, h=28, w=28):
    """m synthetic uint8 'digits', each a distinct random pattern, with labels i % 10."""
    rng = np.random.default_rng(5)
    return (rng.integers(0, 256, size=(m, h, w)).astype(np.uint8),
            (np.arange(m) % 10).astype(np.int64))


# ----- the generator -----

def test_same_seed_same_data_different_seed_different_data():
    images, labels = unique_digits(50)
    a = make_multidigit(images, labels, 40, rng=3)
    b = make_multidigit(images, labels, 40, rng=np.random.default_rng(3))
    c = make_multidigit(images, labels, 40, rng=4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_global_generator_is_seeded_by_manual_seed():
    images, labels = unique_digits(50)
    sn.manual_seed(11)
    a = make_multidigit(images, labels, 10)
    sn.manual_seed(11)
    b = make_multidigit(images, labels, 10)
    np.testing.assert_array_equal(a[0], b[0])


def test_load_multidigit_is_reproducible():
    a = load_multidigit("test", seed=1, n_test=30)
    b = load_multidigit("test", seed=1, n_test=30)
    c = load_multidigit("test", seed=2, n_test=30)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("n", [0, 1, 7])
@pytest.mark.parametrize("overlap", [0, 5, 14, 28])
def test_shape_and_dtype(n, overlap):
    images, labels = unique_digits(12)
    x, y, idx = make_multidigit(images, labels, n, overlap=overlap, rng=0, return_indices=True)
    assert x.shape == (n, 56 - overlap, 28) and x.dtype == np.uint8
    assert y.shape == (2, n) and y.dtype == np.int64
    assert idx.shape == (2, n) and idx.dtype == np.int64


def test_default_canvas_is_the_tutorials_42_by_28():
    x, y = load_multidigit("train", seed=0, n_train=5)
    assert x.shape == (5, 42, 28) and x.dtype == np.uint8
    assert y.shape == (2, 5) and y.dtype == np.int64
    x, y = load_multidigit("test", seed=0, n_test=3, overlap=7)
    assert x.shape == (3, 49, 28)


@pytest.mark.parametrize("overlap", [0, 1, 14, 27, 28])
def test_digits_placed_top_and_bottom_overlap_combined_by_max(overlap):
    images, labels = unique_digits(20)
    x, y, (i, j) = make_multidigit(images, labels, 25, overlap=overlap, rng=1,
                                   return_indices=True)
    first, second = images[i].astype(int), images[j].astype(int)
    top = 28 - overlap
    np.testing.assert_array_equal(x[:, :top], first[:, :top])
    np.testing.assert_array_equal(x[:, top:28], np.maximum(first[:, top:], second[:, :overlap]))
    np.testing.assert_array_equal(x[:, 28:], second[:, overlap:])


def test_overlap_keeps_the_brighter_pixel_from_either_digit():
    dark, bright = np.full((28, 28), 60, np.uint8), np.full((28, 28), 200, np.uint8)
    for first, second in ((dark, bright), (bright, dark)):
        canvas = compose(first, second)
        assert (canvas[:14] == first[0, 0]).all() and (canvas[28:] == second[0, 0]).all()
        assert (canvas[14:28] == 200).all()


def test_labels_match_their_source_digits_and_sources_are_distinct():
    images, labels = unique_digits(30)
    x, y, (i, j) = make_multidigit(images, labels, 500, rng=2, return_indices=True)
    np.testing.assert_array_equal(y[0], labels[i])
    np.testing.assert_array_equal(y[1], labels[j])
    assert (i != j).all()
    assert set(i) == set(j) == set(range(30))     # every source can be either digit


def test_two_sources_always_pair_with_each_other():
    images, labels = unique_digits(2)
    _, y, (i, j) = make_multidigit(images, labels, 50, rng=0, return_indices=True)
    assert (i + j == 1).all()
    assert ((y[0] == 0) & (y[1] == 1) | (y[0] == 1) & (y[1] == 0)).all()


class SourceIndex:
    """Finds which of ``digits`` compose (overlap 14) into a given canvas, by exact pixels."""

    def __init__(self, digits):
        self.digits = digits
        self.tops, self.bottoms = {}, {}
        for k in range(len(digits)):
            self.tops.setdefault(digits[k, :14].tobytes(), []).append(k)
            self.bottoms.setdefault(digits[k, 14:].tobytes(), []).append(k)

    def find(self, canvas):
        """Indices (a, b) with compose(digits[a], digits[b]) == canvas, or None."""
        for a in self.tops.get(canvas[:14].tobytes(), []):
            for b in self.bottoms.get(canvas[28:].tobytes(), []):
                if np.array_equal(np.maximum(self.digits[a, 14:], self.digits[b, :14]),
                                  canvas[14:28]):
                    return a, b
        return None


def test_test_split_uses_only_mnist_test_digits(mnist_test):
    digits, digit_labels = mnist_test
    index = SourceIndex(digits)
    x, y = load_multidigit("test", seed=0, n_test=20)
    for k in range(len(x)):
        found = index.find(x[k])
        assert found is not None, f"sample {k} is not made of two MNIST test digits"
        a, b = found
        assert a != b
        assert (y[0, k], y[1, k]) == (digit_labels[a], digit_labels[b])
    # the same search finds no training sample in the test digits: the check can fail
    x_train, _ = load_multidigit("train", seed=0, n_train=20)
    assert all(index.find(c) is None for c in x_train)


@pytest.mark.parametrize("kwargs, match", [
    (dict(overlap=29), "overlap must be an int in 0..28"),
    (dict(overlap=-1), "overlap must be an int in 0..28"),
    (dict(overlap=1.5), "overlap must be an int"),
    (dict(n=-1), "n must be a non-negative int"),
])
def test_generator_argument_errors(kwargs, match):
    images, labels = unique_digits(5)
    kwargs = {"n": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        make_multidigit(images, labels, **kwargs)


def test_generator_input_errors():
    images, labels = unique_digits(5)
    with pytest.raises(ValueError, match="at least 2 source images"):
        make_multidigit(images[:1], labels[:1], 3)
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        make_multidigit(images, labels[:4], 3)
    with pytest.raises(TypeError, match="uint8 images"):
        make_multidigit(images.astype(np.float32), labels, 3)
    with pytest.raises(ValueError, match="split must be"):
        load_multidigit("val")


# ----- files -----

def test_npz_round_trip(tmp_path):
    x, y = load_multidigit("test", seed=0, n_test=10)
    path = tmp_path / "two_digit_test.data"          # used as given: no .npz appended
    save_multidigit_npz(path, x, y)
    assert os.listdir(tmp_path) == ["two_digit_test.data"]   # the temporary file is gone
    x2, y2 = load_multidigit_npz(path)
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)
    assert x2.dtype == np.uint8 and y2.dtype == np.int64


def test_npz_float_images_in_unit_range_come_back_as_uint8(tmp_path):
    x, y = load_multidigit("test", seed=0, n_test=4)
    np.savez(tmp_path / "f.npz", images=x.astype(np.float32) / 255, labels=y.astype(np.float64))
    x2, y2 = load_multidigit_npz(tmp_path / "f.npz")
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)


def test_save_validates_before_writing(tmp_path):
    x, y = load_multidigit("test", seed=0, n_test=4)
    with pytest.raises(DataError, match="count mismatch"):
        save_multidigit_npz(tmp_path / "a.npz", x, y[:, :3])
    with pytest.raises(DataError, match=r"shape \(N, H, 28\)"):
        save_multidigit_npz(tmp_path / "a.npz", x[:, :, :20], y)
    assert os.listdir(tmp_path) == []


def write_tutorial_files(folder, images, labels, split="train", suffix="_mini"):
    image_name, label_name = tutorial_files(split, suffix)
    with gzip.open(folder / image_name, "wb") as f:
        pickle.dump(images, f)
    with gzip.open(folder / label_name, "wt") as f:
        np.savetxt(f, labels)


def test_tutorial_file_names():
    assert tutorial_files("train", "_mini") == ("train_multi_digit_mini.pkl.gz",
                                                "train_labels_mini.txt.gz")
    assert tutorial_files("test") == ("test_multi_digit.pkl.gz", "test_labels.txt.gz")


@pytest.mark.parametrize("layout", ["flat float", "3d uint8", "4d float"])
def test_tutorial_layout_reads_with_allow_pickle(tmp_path, layout):
    x, y = load_multidigit("test", seed=3, n_test=6)
    stored = {"flat float": x.reshape(6, -1).astype(np.float32) / 255,
              "3d uint8": x,
              "4d float": x[:, None].astype(np.float64)}[layout]
    write_tutorial_files(tmp_path, stored, y.astype(np.float64))
    x2, y2 = load_multidigit_pkl(tmp_path, "train", "_mini", allow_pickle=True)
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)
    assert x2.dtype == np.uint8 and y2.dtype == np.int64


def test_tutorial_layout_reads_a_single_sample(tmp_path):
    x, y = load_multidigit("test", seed=3, n_test=1)
    write_tutorial_files(tmp_path, x, y)
    x2, y2 = load_multidigit_pkl(tmp_path, "train", "_mini", allow_pickle=True)
    np.testing.assert_array_equal(y2, y)


class _Touch:
    """Unpickling this runs Path.touch: a stand-in for what a hostile pickle could do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.path),)


def test_pickle_is_refused_without_the_flag_and_never_opened(tmp_path):
    marker = tmp_path / "ran"
    write_tutorial_files(tmp_path, _Touch(str(marker)), np.zeros((2, 1)))
    with pytest.raises(DataError, match="allow_pickle=True.*runs arbitrary code"):
        load_multidigit_pkl(tmp_path, "train", "_mini")
    assert not marker.exists()


def truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_corrupt_npz_files_raise_data_error(tmp_path):
    x, y = load_multidigit("test", seed=0, n_test=4)
    good = tmp_path / "good.npz"
    save_multidigit_npz(good, x, y)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(DataError, match="cut.npz: not a readable"):
        load_multidigit_npz(cut)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not an npz archive at all")
    with pytest.raises(DataError, match="junk.npz"):
        load_multidigit_npz(junk)
    with pytest.raises(DataError, match="no such file"):
        load_multidigit_npz(tmp_path / "absent.npz")
    np.savez(tmp_path / "objects.npz", images=np.array([x[0], None], dtype=object), labels=y)
    with pytest.raises(DataError, match="objects.npz"):
        load_multidigit_npz(tmp_path / "objects.npz")


@pytest.mark.parametrize("images, labels, match", [
    (None, "drop", r"missing array\(s\) \['labels'\]"),
    (None, lambda y: y[:, :3], "count mismatch: 4 images but 3 label pairs"),
    (None, lambda y: y.T, r"labels of shape \(2, N\)"),
    (None, lambda y: y[:1], r"labels of shape \(2, N\)"),
    (None, lambda y: y + 10, r"labels must be 0..9"),
    (None, lambda y: y + 0.5, "whole numbers"),
    (lambda x: x[:, :, :27], None, r"images of shape \(N, H, 28\)"),
    (lambda x: x.astype(np.float32) * 2, None, r"pixel values must lie in \[0, 255\]"),
    (lambda x: x.astype(np.float32) - 1, None, r"pixel values must lie in \[0, 255\]"),
    (lambda x: np.full(x.shape, np.nan), None, "NaN"),
])
def test_mismatched_npz_contents_raise_data_error(tmp_path, images, labels, match):
    x, y = load_multidigit("test", seed=0, n_test=4)
    arrays = {"images": images(x) if images else x}
    if labels != "drop":
        arrays["labels"] = labels(y) if labels else y
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=match):
        load_multidigit_npz(tmp_path / "bad.npz")


def test_corrupt_and_mismatched_tutorial_files_raise_data_error(tmp_path):
    x, y = load_multidigit("test", seed=0, n_test=5)
    image_name, label_name = tutorial_files("test")
    write_tutorial_files(tmp_path, x, y[:, :4], split="test", suffix="")
    with pytest.raises(DataError, match="5 images but 4 label pairs"):
        load_multidigit_pkl(tmp_path, "test", allow_pickle=True)
    write_tutorial_files(tmp_path, x[:, :40], y, split="test", suffix="")
    with pytest.raises(DataError, match="N images of 42 x 28"):
        load_multidigit_pkl(tmp_path, "test", allow_pickle=True)
    write_tutorial_files(tmp_path, x, y, split="test", suffix="")
    truncated(tmp_path / image_name)
    with pytest.raises(DataError, match="not a readable gzipped pickle"):
        load_multidigit_pkl(tmp_path, "test", allow_pickle=True)
    write_tutorial_files(tmp_path, x, y, split="test", suffix="")
    (tmp_path / label_name).write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="not a readable gzipped label text"):
        load_multidigit_pkl(tmp_path, "test", allow_pickle=True)
    with gzip.open(tmp_path / label_name, "wt") as f:
        f.write("1 2 3 4 x\n5 6 7 8 9\n")
    with pytest.raises(DataError, match="label text"):
        load_multidigit_pkl(tmp_path, "test", allow_pickle=True)
    os.remove(tmp_path / label_name)
    with pytest.raises(DataError, match="test_labels.txt.gz: no such file"):
        load_multidigit_pkl(tmp_path, "test", allow_pickle=True)


# ----- models -----

@pytest.fixture(scope="module")
def two_digit_batch():
    images, labels = load_multidigit("test", seed=0, n_test=12)
    x = (images.astype(np.float64) / 255.0 - 0.1307) / 0.3081
    return x.reshape(-1, 1, 42, 28), labels


def twins(name, dtype):
    sn.manual_seed(WEIGHT_SEED)
    model = MODELS[name]().to(dtype)
    twin = ref_multidigit.MODELS[name]().to(TORCH_DTYPE[dtype])
    convert.copy_to_torch(model, twin)
    return model.eval(), twin.eval()


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_keys_equal_torch(name):
    model, twin = MODELS[name](), ref_multidigit.MODELS[name]()
    assert list(model.state_dict()) == list(twin.state_dict())
    for key, value in model.state_dict().items():
        assert value.shape == tuple(twin.state_dict()[key].shape), key
    assert model.input_shape == twin.input_shape == (1, 42, 28)


def test_named_layers():
    mlp = MultiMLP()
    assert list(mlp.state_dict()) == ["linear1.weight", "linear1.bias",
                                      "linear2.weight", "linear2.bias"]
    cnn = MultiCNN()
    assert list(cnn.state_dict()) == [f"layers.{i}.{p}" for i in (0, 3, 7, 10)
                                      for p in ("weight", "bias")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [12, 1])
@pytest.mark.parametrize("name", MODELS)
def test_forward_and_gradients_match_torch(name, batch, dtype, backend, two_digit_batch):
    x, labels = two_digit_batch
    # float32: exact max-pool ties in the background would be broken by round-off (helpers)
    x, labels = break_ties(x[:batch], dtype), labels[:, :batch]
    model, twin = twins(name, dtype)
    with sn.use_backend(backend):
        first, second = model(x)
        loss_fn = TwoDigitLoss()
        loss = loss_fn((first, second), labels.T)
        model.zero_grad()
        dx = model.backward(loss_fn.backward())

    tx = torch.tensor(x, requires_grad=True)
    tfirst, tsecond = twin(tx)
    tloss = ref_multidigit.two_digit_loss((tfirst, tsecond), torch.tensor(labels))
    tloss.backward()

    assert first.shape == second.shape == (batch, 10)
    assert first.dtype == second.dtype == dx.dtype == dtype
    assert_close(first, tfirst, dtype, "first-digit logits")
    assert_close(second, tsecond, dtype, "second-digit logits")
    assert_close(loss, tloss, dtype, "loss")
    assert_close(dx, tx.grad, dtype, "d input")
    torch_params = dict(twin.named_parameters())
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert_close(p.grad, torch_params[pname].grad, dtype, f"grad {pname}")


@pytest.mark.parametrize("name", MODELS)
def test_empty_batch(name):
    model = MODELS[name]().eval()
    first, second = model(np.zeros((0, 1, 42, 28), np.float32))
    assert first.shape == second.shape == (0, 10)
    dx = model.backward((np.zeros((0, 10), np.float32), np.zeros((0, 10), np.float32)))
    assert dx.shape == (0, 1, 42, 28)


def test_multicnn_dropout_is_active_only_in_training(two_digit_batch):
    x = two_digit_batch[0].astype(np.float32)
    model = MultiCNN()
    sn.manual_seed(0)
    train_a = model.train()(x)[0]
    sn.manual_seed(0)
    train_b = model(x)[0]
    eval_out = model.eval()(x)[0]
    np.testing.assert_array_equal(train_a, train_b)   # the same seed, the same mask
    assert not np.allclose(train_a, eval_out)


def test_one_head_gradient_only_reaches_its_columns():
    heads = TwoHeads(10)
    a, b = heads(np.arange(40.0).reshape(2, 20))
    np.testing.assert_array_equal(a, np.arange(40.0).reshape(2, 20)[:, :10])
    d = heads.backward((np.ones((2, 10)), None))
    np.testing.assert_array_equal(d, np.concatenate([np.ones((2, 10)), np.zeros((2, 10))], 1))


def test_two_heads_errors():
    heads = TwoHeads(10)
    with pytest.raises(RuntimeError, match="before forward"):
        heads.backward((None, None))
    with pytest.raises(ValueError, match=r"TwoHeads: expected input of shape \(N, 20\)"):
        heads(np.zeros((3, 21)))
    heads(np.zeros((3, 20)))
    with pytest.raises(ValueError, match=r"d_second must have the head's shape \(3, 10\)"):
        heads.backward((np.zeros((3, 10)), np.zeros((3, 11))))
    with pytest.raises(TypeError, match="pair"):
        heads.backward(np.zeros((3, 20)))


# ----- the two-head loss -----

def target_as(layout, y):
    """(2, N) int64 labels in the layout under test."""
    return {"(N, 2)": y.T, "(2, N)": y, "pair": (y[0], y[1])}[layout]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["(N, 2)", "(2, N)", "pair"])
@pytest.mark.parametrize("n", [1, 7])
def test_two_digit_loss_matches_torch(n, layout, dtype, backend, rng):
    logits = [rng.standard_normal((n, 10)).astype(dtype) for _ in range(2)]
    y = rng.integers(0, 10, size=(2, n))
    with sn.use_backend(backend):
        loss_fn = TwoDigitLoss()
        loss = loss_fn(tuple(logits), target_as(layout, y))
        d_first, d_second = loss_fn.backward()
    t = [torch.tensor(v, requires_grad=True) for v in logits]
    tl = [F.cross_entropy(t[k], torch.tensor(y[k])) for k in range(2)]
    tloss = 0.5 * (tl[0] + tl[1])
    tloss.backward()
    assert np.asarray(loss).dtype == dtype and np.asarray(loss).shape == ()
    assert_close(loss, tloss, dtype, "loss")
    assert_close(loss_fn.losses[0], tl[0], dtype, "first-digit loss")
    assert_close(loss_fn.losses[1], tl[1], dtype, "second-digit loss")
    assert_close(d_first, t[0].grad, dtype, "d first")
    assert_close(d_second, t[1].grad, dtype, "d second")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_two_digit_loss_options_match_torch(reduction, backend, rng):
    n, dtype = 6, np.float64
    logits = [rng.standard_normal((n, 10)) for _ in range(2)]
    y = rng.integers(0, 10, size=(2, n))
    y[1, 2] = 3
    weight = rng.uniform(0.5, 2.0, size=10)
    kwargs = dict(weight=weight, ignore_index=3, label_smoothing=0.1)
    grad = rng.standard_normal(n) if reduction == "none" else np.float64(1.7)
    with sn.use_backend(backend):
        loss_fn = TwoDigitLoss(reduction=reduction, **kwargs)
        loss = loss_fn(tuple(logits), y)
        d_first, d_second = loss_fn.backward(grad)
    t = [torch.tensor(v, requires_grad=True) for v in logits]
    tkwargs = dict(kwargs, weight=torch.tensor(weight), reduction=reduction)
    tloss = 0.5 * (F.cross_entropy(t[0], torch.tensor(y[0]), **tkwargs)
                   + F.cross_entropy(t[1], torch.tensor(y[1]), **tkwargs))
    tloss.backward(torch.tensor(grad))
    assert_close(loss, tloss, dtype, "loss")
    assert_close(d_first, t[0].grad, dtype, "d first")
    assert_close(d_second, t[1].grad, dtype, "d second")


def test_two_by_two_labels_are_read_as_one_row_per_sample():
    y = np.array([[1, 2], [3, 4]])
    first, second = split_pair_labels(y, 2)
    np.testing.assert_array_equal(first, [1, 3])
    np.testing.assert_array_equal(second, [2, 4])


def test_two_digit_loss_errors():
    loss_fn = TwoDigitLoss()
    with pytest.raises(RuntimeError, match="before forward"):
        loss_fn.backward()
    with pytest.raises(TypeError, match="pair"):
        loss_fn(np.zeros((3, 20)), np.zeros((3, 2), np.int64))
    with pytest.raises(ValueError, match=r"target of shape \(3, 2\) or \(2, 3\)"):
        loss_fn((np.zeros((3, 10)), np.zeros((3, 10))), np.zeros((3, 3), np.int64))
    with pytest.raises(ValueError, match="one shape"):
        loss_fn((np.zeros((3, 10)), np.zeros((4, 10))), np.zeros((3, 2), np.int64))
