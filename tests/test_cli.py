"""``scratchnet`` end to end: train, resume, evaluate, predict, export, and every failure.

Runs use small subsets (--limit-train / --limit-test) and --no-progress to stay fast.
"""
import gzip
import json
import os
import signal
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import scratchnet as sn
from tests.test_data import serve  # noqa: F401  (pytest fixture: an HTTP server on 127.0.0.1)
from scratchnet import checkpoint, training
from scratchnet.cli import main
from scratchnet.data import load_mnist
from reference import models as ref_models
from tests.helpers import assert_close

EVAL = ["--limit-test", "200"]
FAST = ["--no-progress", *EVAL]
TIMING_KEYS = ("seconds", "samples_per_s")


def run(capsys, *argv):
    """main(argv) -> (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err, *fragments):
    assert err.startswith("scratchnet: error: "), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def numbers(metrics):
    """metrics.json without the wall-clock fields, which differ run to run."""
    epochs = [{k: v for k, v in e.items() if k not in TIMING_KEYS} for e in metrics["epochs"]]
    return {**metrics, "epochs": epochs}


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.json")) as f:
        return json.load(f)


def load_model(run_dir):
    ckpt = checkpoint.load_checkpoint(os.path.join(run_dir, "checkpoint.npz"))
    model = sn.models.build(ckpt.meta["model"], dtype=ckpt.meta["config"]["dtype"])
    model.load_state_dict(ckpt.model_state)
    return model.eval(), ckpt


def assert_same_checkpoint(dir_a, dir_b):
    a = checkpoint.load_checkpoint(os.path.join(dir_a, "checkpoint.npz"))
    b = checkpoint.load_checkpoint(os.path.join(dir_b, "checkpoint.npz"))
    for k in a.model_state:
        assert np.array_equal(a.model_state[k], b.model_state[k]), k
    for idx, entries in a.optimizer_state["state"].items():
        for name, value in entries.items():
            assert np.array_equal(value, b.optimizer_state["state"][idx][name]), (idx, name)
    assert a.meta["rng_state"] == b.meta["rng_state"]


def interrupt_at_step(monkeypatch, optimizer_cls, step):
    """Send a real SIGINT (Ctrl-C) in the middle of the ``step``-th optimizer step."""
    original = optimizer_cls.step
    calls = []

    def step_with_ctrl_c(self, closure=None):
        calls.append(1)
        if len(calls) == step:
            signal.raise_signal(signal.SIGINT)
        return original(self, closure)

    monkeypatch.setattr(optimizer_cls, "step", step_with_ctrl_c)


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    """A finished dry run of mlp, for the tests that need some checkpoint."""
    out = tmp_path_factory.mktemp("runs") / "mlp"
    assert main(["train", "--model", "mlp", "--dry-run", "--out", str(out), *FAST]) == 0
    return out


RESUME_ARGS = ["train", "--model", "mitxcnn", "--limit-train", "320", "--batch-size", "32",
               "--epochs", "2", *FAST]  # 288 training images: 9 batches per epoch; dropout


@pytest.fixture(scope="module")
def mitxcnn_run(tmp_path_factory):
    """Two uninterrupted epochs of mitxcnn: what every resumed run must reproduce bitwise."""
    out = tmp_path_factory.mktemp("runs") / "whole"
    assert main([str(a) for a in RESUME_ARGS] + ["--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def digitcnn_run(tmp_path_factory):
    """digitcnn trained on 3000 images (a twentieth of an epoch of MNIST)."""
    out = tmp_path_factory.mktemp("runs") / "digitcnn"
    code = main(["train", "--model", "digitcnn", "--limit-train", "3000", "--epochs", "1",
                 "--limit-test", "1000", "--no-progress", "--out", str(out)])
    assert code == 0
    return out


# ----- train -----

@pytest.mark.parametrize("name", list(sn.recipes.RECIPES))
def test_dry_run_writes_loadable_outputs(tmp_path, capsys, name):
    out = tmp_path / name
    code, stdout, err = run(capsys, "train", "--model", name, "--dry-run", "--batch-size", "8",
                            "--out", out, *FAST)
    assert code == 0, err
    assert "epoch 1/1" in stdout and "test accuracy" in stdout
    assert sorted(os.listdir(out)) == ["checkpoint.npz", "confusion_matrix.png", "curves.png",
                                       "events.jsonl", "metrics.json", "predictions.png"]
    for png in ("confusion_matrix.png", "curves.png", "predictions.png"):
        with Image.open(out / png) as img:
            assert img.format == "PNG" and img.size[0] > 100
    metrics = read_metrics(out)
    assert len(metrics["epochs"]) == 1 and 0 <= metrics["test_accuracy"] <= 1
    assert metrics["test_samples"] == 16  # dry run: two test batches of 8
    heads = 2 if sn.models.OUTPUTS[name] == "two_logits" else 1
    assert np.array(metrics["confusion_matrix"]).sum() == 16 * heads  # both digits' for two
    model, ckpt = load_model(out)
    assert ckpt.meta["model"] == name and ckpt.meta["finished"]
    x = np.zeros((2, *model.input_shape), dtype=np.float32)
    out = model(x)
    assert [o.shape for o in out] == [(2, 10)] * 2 if heads == 2 else out.shape == (2, 10)


def test_float64_on_the_numpy_backend(tmp_path, capsys):
    out = tmp_path / "r"
    code, stdout, err = run(capsys, "train", "--model", "lenet", "--dry-run", "--dtype", "float64",
                            "--backend", "numpy", "--out", out, *FAST)
    assert code == 0, err
    assert "numpy backend, float64" in stdout
    assert "numba:" not in stdout  # the first-compile notice is the numba backend's only
    model, ckpt = load_model(out)
    assert all(v.dtype == np.float64 for v in ckpt.model_state.values())
    assert all(v.dtype == np.float64 for s in ckpt.optimizer_state["state"].values()
               for k, v in s.items() if k != "step")


def test_the_compile_notice_only_when_kernels_must_compile(tmp_path, capsys, monkeypatch):
    from scratchnet import cli
    args = ["train", "--model", "mlp", "--dry-run", "--backend", "numba", *FAST]
    assert run(capsys, *args, "--out", tmp_path / "warm-up")[0] == 0  # compiled now, if not yet
    code, stdout, _ = run(capsys, *args, "--out", tmp_path / "warm")
    assert code == 0 and "numba:" not in stdout
    with monkeypatch.context() as m:  # an empty disk cache: said before the first step
        m.setattr(cli, "_kernels_cached", lambda: False)
        code, stdout, _ = run(capsys, *args, "--out", tmp_path / "cold")
    assert code == 0 and stdout.splitlines()[1].startswith("numba: compiling the kernels")
    original = sn.optim.SGD.step

    def slow_first_step(self, closure=None):  # as a step compiling kernels would be
        if not getattr(self, "slowed", False):
            self.slowed = True
            time.sleep(0.5)
        return original(self, closure)
    monkeypatch.setattr(sn.optim.SGD, "step", slow_first_step)
    monkeypatch.setattr(cli, "COMPILE_NOTICE_AFTER_S", 0.1)
    code, stdout, _ = run(capsys, *args, "--out", tmp_path / "slow")
    assert code == 0 and stdout.count("numba: compiling the kernels") == 1


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path, capsys):
    args = ["train", "--model", "mlp128", "--limit-train", "300", "--epochs", "2", *FAST]
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert run(capsys, *args, "--seed", seed, "--out", tmp_path / name)[0] == 0
    assert numbers(read_metrics(tmp_path / "a")) == numbers(read_metrics(tmp_path / "b"))
    assert_same_checkpoint(tmp_path / "a", tmp_path / "b")
    assert numbers(read_metrics(tmp_path / "a")) != numbers(read_metrics(tmp_path / "c"))


def test_recipe_and_overrides_are_recorded(mlp_run, tmp_path, capsys):
    config = read_metrics(mlp_run)["config"]
    assert (config["optimizer"], config["lr"], config["batch_size"], config["val_split"]) == \
        ("sgd", 0.1, 32, 0.1)
    out = tmp_path / "lenet"
    code, _, err = run(capsys, "train", "--model", "lenet", "--dry-run", "--optimizer", "adamw",
                       "--lr", "0.002", "--out", out, *FAST)
    assert code == 0, err
    _, ckpt = load_model(out)
    group = ckpt.optimizer_state["param_groups"][0]
    assert (group["lr"], group["weight_decay"]) == (0.002, 0.01)  # AdamW's torch default
    assert ckpt.meta["config"]["normalize"] == [0.1307, 0.3081]


# ----- resume -----

def test_resume_after_ctrl_c_equals_an_uninterrupted_run(mitxcnn_run, tmp_path, capsys,
                                                         monkeypatch):
    whole, parts = mitxcnn_run, tmp_path / "parts"

    with monkeypatch.context() as m:
        interrupt_at_step(m, sn.optim.SGD, 4)  # epoch 1, batch 4
        code, _, err = run(capsys, *RESUME_ARGS, "--out", parts)
    assert code == 130
    assert err.count("\n") == 1 and "interrupted at epoch 1, batch 4" in err
    assert checkpoint.load_checkpoint(parts / "checkpoint.npz").meta["progress"]["batch"] == 4

    with monkeypatch.context() as m:
        interrupt_at_step(m, sn.optim.SGD, 10)  # 4 + 10 = step 14: epoch 2, batch 5
        code, _, err = run(capsys, "train", "--resume", parts, "--no-progress")
    assert code == 130 and "interrupted at epoch 2, batch 5" in err

    code, stdout, err = run(capsys, "train", "--resume", parts, "--no-progress")
    assert code == 0, err
    assert numbers(read_metrics(parts)) == numbers(read_metrics(whole))
    assert_same_checkpoint(parts, whole)


def test_resume_at_an_epoch_boundary_with_more_epochs(mitxcnn_run, tmp_path, capsys):
    whole, parts = mitxcnn_run, tmp_path / "parts"
    first = [a if a != "2" else "1" for a in RESUME_ARGS]  # --epochs 1
    assert run(capsys, *first, "--out", parts)[0] == 0
    code, _, err = run(capsys, "train", "--resume", parts / "checkpoint.npz", "--epochs", "2",
                       "--no-progress")
    assert code == 0, err
    assert numbers(read_metrics(parts)) == numbers(read_metrics(whole))
    assert_same_checkpoint(parts, whole)


def test_the_trainer_knows_no_heads(tmp_path):
    """A two-head model trains through the same fit/evaluate; only its task differs."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 1, 42, 28)).astype(np.float32)
    y = rng.integers(0, 10, size=(96, 2))
    sn.manual_seed(0)
    model = sn.models.build("multimlp")
    task = sn.tasks.for_model(sn.models.OUTPUTS["multimlp"])
    optimizer = sn.optim.Adam(model.parameters(), lr=1e-2)
    shuffle = np.random.default_rng(1)
    state = training.TrainState(shuffle_state=shuffle.bit_generator.state)
    history = training.fit(model, task, optimizer, (x, y), (x[:32], y[:32]), 12, 32, shuffle,
                           state)
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert history[-1]["val_accuracy"] > 0.9  # memorised both digits of (nearly) every sample
    result = training.evaluate(model, task, x, y)
    assert result["predictions"].shape == (96, 2)
    assert result["accuracy"] == np.mean(result["predictions"] == y)


# ----- learning, evaluate, predict, export -----

def test_digitcnn_learns_well_above_chance(digitcnn_run):
    assert read_metrics(digitcnn_run)["test_accuracy"] > 0.8


def test_evaluate_checkpoint_matches_training_report(digitcnn_run, capsys):
    code, stdout, err = run(capsys, "evaluate", digitcnn_run, "--limit-test", "1000")
    assert code == 0, err
    accuracy = read_metrics(digitcnn_run)["test_accuracy"]
    assert f"accuracy {100 * accuracy:.2f}%" in stdout
    assert "per-class accuracy" in stdout and "confusion matrix" in stdout
    matrix = np.array([line.split()[1:] for line in stdout.splitlines()[-10:]], dtype=int)
    assert np.array_equal(matrix, read_metrics(digitcnn_run)["confusion_matrix"])


def torch_accuracy(twin, normalization, n):
    images, labels = load_mnist("test")
    x = torch.tensor(images[:n], dtype=torch.float32).unsqueeze(1) / 255
    if normalization:
        x = (x - normalization[0]) / normalization[1]
    with torch.no_grad():
        predicted = twin.eval()(x.reshape(n, *twin.input_shape)).argmax(1).numpy()
    return np.mean(predicted == labels[:n])


@pytest.mark.parametrize("name", ["lenet", "mlp128"])
def test_evaluate_a_state_dict_saved_by_torch(tmp_path, capsys, name):
    torch.manual_seed(0)
    twin = ref_models.build(name)
    path = tmp_path / "tutorial_model.pth"
    torch.save(twin.state_dict(), path)  # what the tutorial's own code writes
    code, stdout, err = run(capsys, "evaluate", path, "--limit-test", "300")
    assert code == 0, err
    assert stdout.startswith(f"{name} on 300 mnist test images")
    expected = torch_accuracy(twin, sn.recipes.RECIPES[name].normalize, 300)
    assert f"accuracy {100 * expected:.2f}%" in stdout
    assert run(capsys, "evaluate", path, "--model", name, "--limit-test", "300")[1] == stdout


def test_evaluate_trained_weights_exported_to_torch(digitcnn_run, tmp_path, capsys):
    path = tmp_path / "digitcnn.pth"
    assert run(capsys, "export", digitcnn_run, path)[0] == 0
    twin = ref_models.build("digitcnn")
    twin.load_state_dict(torch.load(path, weights_only=True))
    code, stdout, _ = run(capsys, "evaluate", path, "--limit-test", "1000")
    expected = torch_accuracy(twin, (0.5, 0.5), 1000)
    assert code == 0 and f"accuracy {100 * expected:.2f}%" in stdout


def test_export_gives_the_twin_the_same_outputs(digitcnn_run, tmp_path, capsys):
    path = tmp_path / "out.pth"
    code, stdout, err = run(capsys, "export", digitcnn_run / "checkpoint.npz", path)
    assert code == 0, err
    twin = ref_models.build("digitcnn")
    twin.load_state_dict(torch.load(path, weights_only=True))
    model, _ = load_model(digitcnn_run)
    images, _ = load_mnist("test")
    x = ((images[:64].astype(np.float32) / 255 - 0.5) / 0.5)[:, None]
    with torch.no_grad():
        expected = twin.eval()(torch.tensor(x))
    assert_close(model(x), expected, np.float32, "exported digitcnn logits")


def test_predict_recognises_photographed_mnist_digits(digitcnn_run, tmp_path, capsys):
    model, _ = load_model(digitcnn_run)
    images, labels = load_mnist("test")
    images, labels = images[5000:5200], labels[5000:5200]  # not among the tested 1000
    probs = sn.tasks.Classification("logits").probabilities(
        model(((images.astype(np.float32) / 255 - 0.5) / 0.5)[:, None]))
    confident = np.flatnonzero((probs.argmax(1) == labels) & (probs.max(1) > 0.95))[:8]
    assert len(confident) == 8
    paths = []
    for i in confident:  # dark ink on light paper, 4x larger, RGB: as a scan would be
        path = tmp_path / f"digit{i}_{labels[i]}.png"
        Image.fromarray(255 - images[i]).resize((112, 112), Image.Resampling.BICUBIC) \
            .convert("RGB").save(path)
        paths.append(path)
    code, stdout, err = run(capsys, "predict", digitcnn_run, *paths)
    assert code == 0, err
    rows = [line.split() for line in stdout.splitlines()[1:]]
    assert [int(r[1]) for r in rows] == [int(labels[i]) for i in confident]
    for r in rows:
        p = np.array(r[2:], dtype=float)
        assert len(p) == 10 and abs(p.sum() - 1) < 1e-3


# ----- failures: one line, non-zero, never a traceback -----

@pytest.mark.parametrize("argv, fragment", [
    ([], "required"),
    (["train"], "--model"),
    (["train", "--model", "nope"], "invalid choice"),
    (["train", "--model", "mlp", "--epochs", "0"], "positive integer"),
    (["train", "--model", "mlp", "--batch-size", "x"], "positive integer"),
    (["train", "--model", "mlp", "--lr", "-1"], "positive number"),
    (["train", "--model", "mlp", "--lr", "nan"], "positive number"),
    (["train", "--model", "mlp", "--val-split", "1.5"], "[0, 1)"),
    (["train", "--model", "mlp", "--limit-train", "-5"], "positive integer"),
    (["train", "--model", "mlp", "--optimizer", "rmsprop"], "invalid choice"),
    (["train", "--model", "mlp", "--bogus"], "unrecognized"),
    (["evaluate"], "required"),
    (["predict", "x.npz"], "required"),
])
def test_bad_command_lines(capsys, argv, fragment):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert_one_line_error(err, fragment)


def test_help_exits_zero(capsys):
    assert main(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # undo the line wrapping
    assert "--batch-size" in out and "mitxcnn" in out and "(default: float32)" in out


@pytest.mark.parametrize("argv, fragment", [
    (["--nesterov"], "Nesterov"),
    (["--optimizer", "adam", "--momentum", "0.9"], "momentum"),
    (["--data-dir", "/nonexistent/mnist"], "not found"),
])
def test_bad_settings_and_missing_data(tmp_path, capsys, argv, fragment):
    code, _, err = run(capsys, "train", "--model", "mlp", "--dry-run", "--out", tmp_path / "r",
                       *FAST, *argv)
    assert code == 1
    assert_one_line_error(err, fragment)
    assert not (tmp_path / "r").exists()


def test_corrupt_data(tmp_path, capsys):
    from scratchnet.data.resources import SHIPPED_MNIST_DIR
    for name in os.listdir(SHIPPED_MNIST_DIR):
        if name.endswith(".gz"):
            with gzip.open(os.path.join(SHIPPED_MNIST_DIR, name)) as f:
                data = f.read()
            if name.startswith("train-images"):
                data = data[:5000]  # truncated
            (tmp_path / name[:-3]).write_bytes(data)
    code, _, err = run(capsys, "train", "--model", "mlp", "--dry-run", "--data-dir", tmp_path,
                       "--out", tmp_path / "r", *FAST)
    assert code == 1
    assert_one_line_error(err, "train-images-idx3-ubyte", "truncated")


def test_diverging_loss_stops_and_saves_nothing(tmp_path, capsys):
    out = tmp_path / "r"
    code, _, err = run(capsys, "train", "--model", "mlp", "--lr", "1e30", "--limit-train", "500",
                       "--out", out, *FAST)
    assert code == 1
    assert_one_line_error(err, "loss became", "no checkpoint was saved")
    assert os.listdir(out) == ["events.jsonl"]  # the event log says how it failed
    assert (out / "events.jsonl").read_text().splitlines()[-1].endswith('"status": "failed"}')


def test_checkpoint_of_another_model(mlp_run, tmp_path, capsys):
    code, _, err = run(capsys, "evaluate", mlp_run, "--model", "lenet", *EVAL)
    assert code == 1
    assert_one_line_error(err, "holds a mlp model, not lenet")
    code, _, err = run(capsys, "train", "--resume", mlp_run, "--model", "mlp128", "--no-progress")
    assert code == 1
    assert_one_line_error(err, "not mlp128")
    path = tmp_path / "mlp.pth"
    torch.save(ref_models.build("mlp").state_dict(), path)
    code, _, err = run(capsys, "evaluate", path, "--model", "mlp128", *EVAL)
    assert code == 1
    assert_one_line_error(err, "do not fit model 'mlp128'", "size mismatch")


def test_resume_refuses_changed_settings_and_new_run_refuses_used_folder(mlp_run, capsys):
    code, _, err = run(capsys, "train", "--resume", mlp_run, "--lr", "0.5", "--no-progress")
    assert code == 2
    assert_one_line_error(err, "--lr 0.5 differs from the resumed run's 0.1")
    code, _, err = run(capsys, "train", "--model", "mlp", "--out", mlp_run, *FAST)
    assert code == 2
    assert_one_line_error(err, "already holds a run", "--resume")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
@pytest.mark.parametrize("command", ["evaluate", "predict", "export", "resume"])
def test_corrupt_or_missing_checkpoint(mlp_run, tmp_path, capsys, damage, command):
    path = tmp_path / "checkpoint.npz"
    data = (mlp_run / "checkpoint.npz").read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) * 2 // 3])
    elif damage == "garbage":
        path.write_bytes(os.urandom(2000))
    argv = {"evaluate": ["evaluate", path, *EVAL],
            "predict": ["predict", path, "digit.png"],
            "export": ["export", path, tmp_path / "out.pth"],
            "resume": ["train", "--resume", path, "--no-progress"]}[command]
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert_one_line_error(err, str(path))
    assert not (tmp_path / "out.pth").exists()


def test_checkpoint_not_written_by_train(tmp_path, capsys):
    path = tmp_path / "weights.npz"
    checkpoint.save_checkpoint(path, {"note": "saved by hand"}, sn.models.build("mlp").state_dict())
    for argv in (["evaluate", path], ["train", "--resume", path, "--no-progress"]):
        code, _, err = run(capsys, *argv)
        assert code == 1
        assert_one_line_error(err, "not a checkpoint of `scratchnet train`")


def test_unreadable_and_blank_images(mlp_run, tmp_path, capsys):
    text = tmp_path / "notes.png"
    text.write_text("hello")
    code, _, err = run(capsys, "predict", mlp_run, text)
    assert code == 1
    assert_one_line_error(err, "notes.png")
    blank = tmp_path / "blank.jpg"
    Image.new("RGB", (40, 40), "white").save(blank)
    code, _, err = run(capsys, "predict", mlp_run, blank)
    assert code == 1
    assert_one_line_error(err, "no digit")


def test_pytorch_missing(mlp_run, tmp_path, capsys, monkeypatch):
    path = tmp_path / "mlp.pth"
    torch.save(ref_models.build("mlp").state_dict(), path)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    code, _, err = run(capsys, "export", mlp_run, tmp_path / "out.pth")
    assert code == 1
    assert_one_line_error(err, "needs PyTorch", "pip install torch")
    code, _, err = run(capsys, "evaluate", path, *EVAL)
    assert code == 1
    assert_one_line_error(err, "needs PyTorch")


def test_download_flag_fetches_missing_mnist_from_a_local_mirror(tmp_path, capsys, monkeypatch,
                                                                  serve):
    from scratchnet.data.resources import DATASETS, SHIPPED_MNIST_DIR
    monkeypatch.setitem(DATASETS["mnist"], "mirrors", (serve(SHIPPED_MNIST_DIR),))
    data_dir = tmp_path / "data"
    base = ("train", "--model", "mlp", "--dry-run", "--no-progress", "--data-dir", data_dir)
    code, _, err = run(capsys, *base, "--out", tmp_path / "without")
    assert code == 1 and err.count("\n") == 1 and "--download" in err
    code, stdout, err = run(capsys, *base, "--download", "--out", tmp_path / "with")
    assert code == 0, err
    assert (data_dir / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file()
    assert "test accuracy" in stdout
