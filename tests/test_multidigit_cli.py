"""``scratchnet`` on the two-digit task (multimlp, multicnn): train, resume, evaluate, predict,
data folders, and failures. Small subsets keep it fast, as in test_cli.py."""
import gzip
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import scratchnet as sn
from scratchnet import checkpoint, tasks
from scratchnet.cli import main
from scratchnet.data import load_multidigit, normalize, save_multidigit_npz
from scratchnet.data.multidigit import make_multidigit, npz_file, tutorial_files
from reference import multidigit as ref_multidigit
from tests.test_cli import (assert_one_line_error, assert_same_checkpoint, interrupt_at_step,
                            numbers, read_metrics, run)

FAST = ["--no-progress", "--limit-test", "200"]
HEADS = ("first", "second")
PER_DIGIT = ("loss_first", "loss_second", "accuracy_first", "accuracy_second", "accuracy_both")


def load_model(run_dir):
    ckpt = checkpoint.load_checkpoint(os.path.join(run_dir, "checkpoint.npz"))
    model = sn.models.build(ckpt.meta["model"], dtype=ckpt.meta["config"]["dtype"])
    model.load_state_dict(ckpt.model_state)
    return model.eval(), ckpt


def accuracies_line(first, second, both):
    """How ``evaluate`` and ``train`` print a two-digit model's accuracies."""
    return (f"(first {100 * first:.2f}%, second {100 * second:.2f}%, "
            f"both {100 * both:.2f}%)")


def torch_accuracies(twin, n, seed=1):
    """Each digit's and both digits' accuracy of a torch twin on the first ``n`` images of
    the generated test set (pixels in [0, 1], as the recipe feeds them)."""
    images, labels = load_multidigit("test", seed=seed)
    x = torch.tensor(images[:n], dtype=torch.float32).unsqueeze(1) / 255
    with torch.no_grad():
        first, second = twin.eval()(x)
    right = np.stack([first.argmax(1).numpy() == labels[0, :n],
                      second.argmax(1).numpy() == labels[1, :n]])
    return right[0].mean(), right[1].mean(), right.all(axis=0).mean()


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """multicnn by its recipe (SGD, momentum 0.9) with batch 16 on 3000 generated images:
    under a tenth of the tutorial's 40,000-image epoch."""
    out = tmp_path_factory.mktemp("runs") / "multicnn"
    code = main(["train", "--model", "multicnn", "--limit-train", "3000", "--epochs", "1",
                 "--batch-size", "16", "--limit-test", "500", "--no-progress", "--out",
                 str(out)])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A folder holding a small two-digit dataset in our .npz files: 300 train, 100 test."""
    folder = tmp_path_factory.mktemp("twodigit")
    for split, n in (("train", 300), ("test", 100)):
        images, labels = load_multidigit(split, seed=5, n_train=n, n_test=n)
        save_multidigit_npz(folder / npz_file(split), images, labels)
    return folder


# ----- train -----

def assert_plausible(metrics, prefix):
    """Per-digit metrics consistent with the joint ones they refine."""
    values = {k: metrics[f"{prefix}{k}"] for k in ("loss", "accuracy", *PER_DIGIT)}
    assert all(0 <= values[f"accuracy_{k}"] <= 1 for k in (*HEADS, "both")), values
    assert values["accuracy"] == pytest.approx(
        (values["accuracy_first"] + values["accuracy_second"]) / 2, abs=1e-12)
    assert values["accuracy_both"] <= min(values["accuracy_first"], values["accuracy_second"])
    assert values["accuracy_both"] >= values["accuracy_first"] + values["accuracy_second"] - 1
    # the recipe's loss is the mean of the two heads' cross-entropies (float32 sums)
    assert values["loss"] == pytest.approx((values["loss_first"] + values["loss_second"]) / 2,
                                           rel=1e-5)
    assert 0 < values["loss_first"] < 10 and 0 < values["loss_second"] < 10


@pytest.mark.parametrize("name", ["multimlp", "multicnn"])
def test_dry_run_writes_outputs_with_per_digit_metrics(tmp_path, capsys, name):
    out = tmp_path / name
    code, stdout, err = run(capsys, "train", "--model", name, "--dry-run", "--out", out, *FAST)
    assert code == 0, err
    assert "generated from MNIST, data seed 1" in stdout
    assert "SGD lr 0.01 momentum 0.9, batch 64" in stdout and "10% validation" in stdout
    assert "epoch 1/1" in stdout and "both" in stdout and "test accuracy" in stdout
    assert sorted(os.listdir(out)) == ["checkpoint.npz", "confusion_matrix.png", "curves.png",
                                       "events.jsonl", "metrics.json", "predictions.png"]
    for png in ("confusion_matrix.png", "curves.png", "predictions.png"):
        with Image.open(out / png) as img:
            assert img.format == "PNG" and img.size[0] > 100
    metrics = read_metrics(out)
    config = metrics["config"]
    assert (config["dataset"], config["n_train"], config["n_test"], config["data_seed"]) == \
        ("two-digit", 40000, 4000, 1)
    assert (config["optimizer"], config["lr"], config["momentum"], config["batch_size"],
            config["val_split"], config["normalize"]) == ("sgd", 0.01, 0.9, 64, 0.1, None)
    (epoch,) = metrics["epochs"]
    assert_plausible(epoch, "train_")
    assert_plausible(epoch, "val_")
    assert_plausible(metrics, "test_")
    n = metrics["test_samples"]
    assert n == 128  # dry run: two test batches of 64
    first, second = (np.array(metrics[f"confusion_matrix_{h}"]) for h in HEADS)
    assert first.sum() == second.sum() == n
    assert np.array_equal(np.array(metrics["confusion_matrix"]), first + second)
    assert np.trace(first) / n == pytest.approx(metrics["test_accuracy_first"])
    assert np.trace(second) / n == pytest.approx(metrics["test_accuracy_second"])
    model, ckpt = load_model(out)
    assert ckpt.meta["model"] == name and ckpt.meta["finished"]
    heads = model(np.zeros((3, 1, 42, 28), dtype=np.float32))
    assert [h.shape for h in heads] == [(3, 10), (3, 10)]


def test_multicnn_learns_each_digit_well_above_chance(learned):
    metrics = read_metrics(learned)
    # chance is 10% per digit and 1% for both
    assert metrics["test_accuracy_first"] > 0.4 and metrics["test_accuracy_second"] > 0.4
    assert metrics["test_accuracy_both"] > 0.15
    assert metrics["test_samples"] == 500


RESUME_ARGS = ["train", "--model", "multicnn", "--limit-train", "160", "--batch-size", "16",
               "--epochs", "2", "--no-progress", "--limit-test", "50"]  # 144: 9 batches/epoch


def test_resume_after_ctrl_c_equals_an_uninterrupted_run(tmp_path, capsys, monkeypatch):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run(capsys, *RESUME_ARGS, "--out", whole)[0] == 0

    with monkeypatch.context() as m:
        interrupt_at_step(m, sn.optim.SGD, 4)  # epoch 1, batch 4
        code, _, err = run(capsys, *RESUME_ARGS, "--out", parts)
    assert code == 130 and "interrupted at epoch 1, batch 4" in err
    with monkeypatch.context() as m:
        interrupt_at_step(m, sn.optim.SGD, 8)  # 4 + 8 = step 12: epoch 2, batch 3
        code, _, err = run(capsys, "train", "--resume", parts, "--no-progress")
    assert code == 130 and "interrupted at epoch 2, batch 3" in err

    code, _, err = run(capsys, "train", "--resume", parts, "--no-progress")
    assert code == 0, err
    assert numbers(read_metrics(parts)) == numbers(read_metrics(whole))
    assert "train_accuracy_both" in read_metrics(parts)["epochs"][1]
    assert_same_checkpoint(parts, whole)


def test_resume_refuses_changed_two_digit_settings(tmp_path, capsys):
    out = tmp_path / "r"
    assert run(capsys, "train", "--model", "multimlp", "--dry-run", "--out", out, *FAST)[0] == 0
    for flag, value, theirs in (("--n-train", "500", "40000"), ("--data-seed", "3", "1")):
        code, _, err = run(capsys, "train", "--resume", out, flag, value, "--no-progress")
        assert code == 2
        assert_one_line_error(err, f"{flag} {value} differs from the resumed run's {theirs}")


# ----- evaluate -----

def test_evaluate_checkpoint_matches_training_report(learned, capsys):
    code, stdout, err = run(capsys, "evaluate", learned, "--limit-test", "500")
    assert code == 0, err
    metrics = read_metrics(learned)
    assert stdout.startswith("multicnn on 500 two-digit (generated from MNIST, data seed 1) "
                             "test images")
    assert accuracies_line(metrics["test_accuracy_first"], metrics["test_accuracy_second"],
                           metrics["test_accuracy_both"]) in stdout
    assert (f"loss {metrics['test_loss']:.4f} (first {metrics['test_loss_first']:.4f}, "
            f"second {metrics['test_loss_second']:.4f})") in stdout
    for head in HEADS:
        assert f"per-class accuracy, {head} digit" in stdout
    lines = stdout.splitlines()
    for head in HEADS:
        start = lines.index(f"confusion matrix, {head} digit (rows: true class, columns: "
                            f"predicted class):") + 2
        matrix = np.array([line.split()[1:] for line in lines[start:start + 10]], dtype=int)
        assert np.array_equal(matrix, metrics[f"confusion_matrix_{head}"])


def test_evaluate_exported_weights_in_torch_agree(learned, tmp_path, capsys):
    path = tmp_path / "multicnn.pth"
    code, stdout, err = run(capsys, "export", learned, path)
    assert code == 0, err
    twin = ref_multidigit.MultiCNN()
    twin.load_state_dict(torch.load(path, weights_only=True))
    code, stdout, err = run(capsys, "evaluate", path, "--limit-test", "500")
    assert code == 0, err
    assert stdout.startswith("multicnn on 500 two-digit")  # the model inferred from the keys
    assert accuracies_line(*torch_accuracies(twin, 500)) in stdout
    metrics = read_metrics(learned)
    assert accuracies_line(metrics["test_accuracy_first"], metrics["test_accuracy_second"],
                           metrics["test_accuracy_both"]) in stdout


@pytest.mark.parametrize("name", ["multimlp", "multicnn"])
def test_evaluate_a_state_dict_saved_by_torch(tmp_path, capsys, name):
    torch.manual_seed(0)
    twin = ref_multidigit.MODELS[name]()
    path = tmp_path / "twin.pt"
    torch.save(twin.state_dict(), path)  # what the tutorial's own code writes
    code, stdout, err = run(capsys, "evaluate", path, "--limit-test", "300")
    assert code == 0, err
    assert stdout.startswith(f"{name} on 300 two-digit (generated from MNIST, data seed 1)")
    assert accuracies_line(*torch_accuracies(twin, 300)) in stdout
    code, stdout, err = run(capsys, "evaluate", path, "--limit-test", "300", "--data-seed", "7",
                            "--model", name)
    assert code == 0, err
    assert "data seed 7" in stdout
    assert accuracies_line(*torch_accuracies(twin, 300, seed=7)) in stdout


# ----- predict -----

def test_predict_two_digit_images_saved_as_png(learned, tmp_path, capsys):
    model, _ = load_model(learned)
    images, labels = load_multidigit("test", seed=1)
    images, labels = images[3000:3400], labels[:, 3000:3400].T  # not among the tested 500
    probs = tasks.TwoDigitClassification().probabilities(
        model(normalize(images, input_shape=(1, 42, 28))))
    confident = np.flatnonzero((probs.argmax(2) == labels).all(1)
                               & (probs.max(2) > 0.7).all(1))[:6]
    assert len(confident) >= 3
    paths = []
    for k, i in enumerate(confident):
        path = tmp_path / f"pair{i}.png"
        if k == 0:  # the canvas itself, white on black
            Image.fromarray(images[i]).save(path)
        else:  # dark ink on light paper, 3x larger, RGB: as a scan would be
            Image.fromarray(255 - images[i]).resize((84, 126), Image.Resampling.BICUBIC) \
                .convert("RGB").save(path)
        paths.append(path)
    code, stdout, err = run(capsys, "predict", learned, *paths)
    assert code == 0, err
    rows = [line.split() for line in stdout.splitlines()[1:]]
    assert len(rows) == 2 * len(paths)
    assert [r[1] for r in rows] == ["first", "second"] * len(paths)
    assert [int(r[2]) for r in rows] == [int(d) for i in confident for d in labels[i]]
    for r in rows:
        p = np.array(r[3:], dtype=float)
        assert len(p) == 10 and abs(p.sum() - 1) < 1e-3


def test_two_digit_preprocessing_keeps_generated_canvases_recognisable(learned):
    """The same model on the canvases and on them re-read from scans: nearly the same answers."""
    from scratchnet.preprocess import to_two_digit
    model, _ = load_model(learned)
    images, labels = load_multidigit("test", seed=1)
    images, labels = images[3400:3600], labels[:, 3400:3600].T
    scans = [np.asarray(Image.fromarray(255 - im).resize((56, 84), Image.Resampling.BICUBIC))
             for im in images]
    redone = np.stack([to_two_digit(s) for s in scans])
    assert redone.shape == images.shape and redone.dtype == np.uint8
    task = tasks.TwoDigitClassification()
    direct = task.predict(model(normalize(images, input_shape=(1, 42, 28))))
    scanned = task.predict(model(normalize(redone, input_shape=(1, 42, 28))))
    assert np.mean(scanned == labels) > np.mean(direct == labels) - 0.1


def test_predict_blank_image(learned, tmp_path, capsys):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (30, 50), "white").save(blank)
    code, _, err = run(capsys, "predict", learned, blank)
    assert code == 1
    assert_one_line_error(err, "blank.png", "no digits")


# ----- data folders -----

def test_train_and_evaluate_from_npz_files(data_dir, tmp_path, capsys):
    out = tmp_path / "r"
    code, stdout, err = run(capsys, "train", "--model", "multimlp", "--dry-run", "--data-dir",
                            data_dir, "--out", out, "--no-progress")
    assert code == 0, err
    assert f"from {data_dir / npz_file('train')}" in stdout
    assert read_metrics(out)["test_samples"] == 100  # the whole test file (under 2 batches)
    code, stdout, err = run(capsys, "evaluate", out)  # the checkpoint's data folder
    assert code == 0, err
    assert stdout.startswith(f"multimlp on 100 two-digit (from {data_dir / npz_file('test')})")
    code, stdout, err = run(capsys, "evaluate", out, "--data-dir", tmp_path / "nothing-here")
    assert code == 1
    assert_one_line_error(err, "nothing-here", "no two-digit test files", "no MNIST files")


def write_tutorial_files(folder, split, n, seed):
    """The tutorial's layout: pickled float (N, 1176) images in [0, 1], labels as text."""
    images, labels = load_multidigit(split, seed=seed, n_train=n, n_test=n)
    image_name, label_name = tutorial_files(split)
    with gzip.open(folder / image_name, "wb") as f:
        pickle.dump(images.reshape(n, -1).astype(np.float32) / 255, f)
    with gzip.open(folder / label_name, "wt") as f:
        np.savetxt(f, labels, fmt="%d")
    return images, labels


def test_tutorial_pickles_need_allow_pickle(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "tutorial"
    folder.mkdir()
    write_tutorial_files(folder, "train", 300, 2)
    write_tutorial_files(folder, "test", 80, 3)
    argv = ["train", "--model", "multimlp", "--dry-run", "--data-dir", folder, "--no-progress"]

    with monkeypatch.context() as m:
        m.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled without the flag"))
        code, _, err = run(capsys, *argv, "--out", tmp_path / "refused")
    assert code == 1
    assert_one_line_error(err, str(folder), "_multi_digit.pkl.gz", "--allow-pickle", "runs")
    assert not (tmp_path / "refused").exists()

    out = tmp_path / "allowed"
    code, stdout, err = run(capsys, *argv, "--allow-pickle", "--out", out)
    assert code == 0, err
    assert f"from {folder / tutorial_files('train')[0]}" in stdout
    assert read_metrics(out)["test_samples"] == 80
    # evaluate reads the pickle again only when told to, too
    code, _, err = run(capsys, "evaluate", out)
    assert code == 1 and "--allow-pickle" in err
    code, stdout, err = run(capsys, "evaluate", out, "--allow-pickle")
    assert code == 0, err
    test_file = folder / tutorial_files("test")[0]
    assert stdout.startswith(f"multimlp on 80 two-digit (from {test_file})")
    assert len([line for line in stdout.splitlines() if line.startswith("per-class")]) == 2


def test_help_warns_that_unpickling_runs_code(capsys):
    assert main(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--allow-pickle" in out and "Unpickling runs whatever code the file names" in out
    assert "multicnn" in out


@pytest.mark.parametrize("damage", ["garbage", "wrong-canvas", "bad-labels"])
def test_bad_data_files(tmp_path, capsys, damage):
    folder = tmp_path / "d"
    folder.mkdir()
    path = folder / npz_file("test")  # train reads the test set first
    if damage == "garbage":
        path.write_bytes(os.urandom(500))
    else:
        digits = np.random.default_rng(0).integers(0, 256, (20, 28, 28)).astype(np.uint8)
        images, labels = make_multidigit(digits, np.arange(20) % 10, 30, rng=0,
                                         overlap=0 if damage == "wrong-canvas" else 14)
        if damage == "bad-labels":
            labels = labels[:, :-1]
        np.savez(path, images=images, labels=labels)
    (folder / npz_file("train")).write_bytes(path.read_bytes())
    code, _, err = run(capsys, "train", "--model", "multicnn", "--dry-run", "--data-dir",
                       folder, "--out", tmp_path / "r", "--no-progress")
    assert code == 1
    assert_one_line_error(err, str(path))


@pytest.mark.parametrize("argv, fragment", [
    (["train", "--model", "mlp", "--n-train", "100"], "two-digit models"),
    (["train", "--model", "lenet", "--allow-pickle"], "two-digit models"),
    (["train", "--model", "multicnn", "--dataset", "fashion-mnist"], "--dataset does not apply"),
    (["train", "--model", "multicnn", "--n-test", "0"], "positive integer"),
    (["train", "--model", "multicnn", "--data-seed", "-1"], "non-negative integer"),
    (["evaluate", "x.npz", "--n-train", "5"], "unrecognized"),
])
def test_bad_command_lines(capsys, argv, fragment):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert_one_line_error(err, fragment)


def test_wrong_model_and_misplaced_flags(tmp_path, capsys):
    path = tmp_path / "mlp.pth"
    torch.save(ref_multidigit.MultiMLP().state_dict(), path)
    code, _, err = run(capsys, "evaluate", path, "--model", "multicnn", "--limit-test", "10")
    assert code == 1
    assert_one_line_error(err, "do not fit model 'multicnn'")
    from reference import models as ref_models
    single = tmp_path / "lenet.pth"
    torch.save(ref_models.build("lenet").state_dict(), single)
    code, _, err = run(capsys, "evaluate", single, "--data-seed", "3", "--limit-test", "10")
    assert code == 2
    assert_one_line_error(err, "--data-seed applies to the two-digit models", "not lenet")


def test_two_digit_preprocessing_edge_cases():
    from scratchnet.preprocess import ImageError, to_two_digit
    line = np.full((30, 60), 255, dtype=np.uint8)
    line[14:16, 5:55] = 0  # one dark stroke: no ink in one half of its box
    out = to_two_digit(line)
    assert out.shape == (42, 28) and out.dtype == np.uint8 and out.max() > 200
    tall = np.zeros((400, 50), dtype=np.uint8)
    tall[10:390, 20:30] = 255  # taller than the canvas allows: shrunk to fit, never cut
    out = to_two_digit(tall)
    assert out[0].max() == 0 and out[-1].max() == 0 and out.max() > 200
    with pytest.raises(ImageError, match="blank"):
        to_two_digit(np.full((20, 20), 90, dtype=np.uint8))
    with pytest.raises(ImageError, match="uint8"):
        to_two_digit(np.zeros((20, 20), dtype=np.float32))


def test_data_folder_finds_the_tutorials_mini_files(tmp_path):
    from scratchnet.data.multidigit import find_multidigit_files, load_multidigit_dir
    images, labels = load_multidigit("test", seed=0, n_test=12)
    save_multidigit_npz(tmp_path / npz_file("test", "_mini"), images, labels)
    assert find_multidigit_files(tmp_path, "test") == \
        ("npz", "_mini", str(tmp_path / "test_multi_digit_mini.npz"))
    got_images, got_labels, path = load_multidigit_dir(tmp_path, "test")
    assert np.array_equal(got_images, images) and np.array_equal(got_labels, labels)
    assert find_multidigit_files(tmp_path, "train") is None
