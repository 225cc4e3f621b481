"""The run layer from Python: the same run as the CLI's, resume, the folder checks, signals."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import scratchnet as sn
from scratchnet import checkpoint
from scratchnet.cli import main
from scratchnet.data import load_mnist
from scratchnet.run import Interrupted, NothingToTrain, Run, SettingsError
from tests.test_cli import assert_one_line_error, assert_same_checkpoint, numbers, read_metrics
from tests.test_cli import run as cli

SMALL = dict(limit_train=300, limit_test=100, epochs=2, seed=5)
SMALL_FLAGS = ["--limit-train", "300", "--limit-test", "100", "--epochs", "2", "--seed", "5"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def send_at_step(monkeypatch, signum, step):
    """Deliver ``signum`` to this process in the middle of the ``step``-th optimizer step."""
    original, calls = sn.optim.SGD.step, []

    def step_with_signal(self, closure=None):
        calls.append(1)
        if len(calls) == step:
            signal.raise_signal(signum)
        return original(self, closure)
    monkeypatch.setattr(sn.optim.SGD, "step", step_with_signal)


@pytest.fixture(scope="module")
def python_run(tmp_path_factory):
    """mitxcnn (dropout, SGD with Nesterov momentum) for two small epochs, from Python."""
    out = tmp_path_factory.mktemp("py") / "run"
    return sn.train("mitxcnn", out=str(out), no_progress=True, **SMALL)


def test_python_and_cli_give_bitwise_the_same_checkpoint(python_run, tmp_path, capsys):
    code, _, err = cli(capsys, "train", "--model", "mitxcnn", *SMALL_FLAGS, "--no-progress",
                       "--out", tmp_path / "cli")
    assert code == 0, err
    assert_same_checkpoint(python_run.out, tmp_path / "cli")
    assert numbers(read_metrics(python_run.out)) == numbers(read_metrics(tmp_path / "cli"))


def test_history_evaluate_and_predict(python_run):
    assert [r["epoch"] for r in python_run.history] == [1, 2]
    assert python_run.history == read_metrics(python_run.out)["epochs"]
    result = python_run.evaluate(limit_test=100)
    assert result["accuracy"] == python_run.test["test_accuracy"]
    assert np.array_equal(result["confusion_matrix"], python_run.test["confusion_matrix"])
    images, _ = load_mnist("test")
    probs = python_run.predict(images[:5])
    assert probs.shape == (5, 10) and np.allclose(probs.sum(1), 1)
    assert np.array_equal(probs.argmax(1), result["predictions"][:5])
    # one image alone: the same probabilities up to float32 round-off (a one-row product may
    # round its sums in another order than a five-row one)
    np.testing.assert_allclose(python_run.predict(images[3]), probs[3:4], rtol=1e-5, atol=1e-7)
    loaded = Run.load(python_run.out)
    assert np.array_equal(loaded.predict(images[:5]), probs)
    assert loaded.history == python_run.history


def test_resume_from_python_continues_exactly(python_run, tmp_path):
    part = sn.train("mitxcnn", out=str(tmp_path / "part"), no_progress=True,
                    **{**SMALL, "epochs": 1})
    assert len(part.history) == 1
    resumed = Run.resume(tmp_path / "part").train(epochs=2, no_progress=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert_same_checkpoint(tmp_path / "part", python_run.out)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_and_the_run_resumes_exactly(python_run, tmp_path, capsys, monkeypatch,
                                                    signum):
    out = tmp_path / "stopped"
    with monkeypatch.context() as m:
        send_at_step(m, signum, 12)  # epoch 2 (9 batches each), batch 3
        code, _, err = cli(capsys, "train", "--model", "mitxcnn", *SMALL_FLAGS, "--no-progress",
                           "--out", out)
    assert code == 128 + signum
    assert err.count("\n") == 1 and "interrupted at epoch 2, batch 3" in err
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers put back
    with monkeypatch.context() as m:
        send_at_step(m, signum, 2)
        with pytest.raises(Interrupted) as stopped:
            Run.resume(out).train(no_progress=True)
    assert (stopped.value.signal, stopped.value.epoch, stopped.value.batch) == (signum, 2, 5)
    Run.resume(out).train(no_progress=True)
    assert_same_checkpoint(out, python_run.out)
    assert numbers(read_metrics(out)) == numbers(read_metrics(python_run.out))


def test_resume_removes_what_a_killed_save_left(tmp_path):
    sn.train("mlp", out=str(tmp_path / "r"), backend="numpy", limit_train=100, limit_test=20,
             epochs=1, no_progress=True)
    stale = tmp_path / "r" / ".checkpoint.npz.k1ll3d9x.tmp"
    stale.write_bytes(b"half a checkpoint")
    Run.resume(tmp_path / "r").train(epochs=2, no_progress=True)
    assert sorted(p.name for p in (tmp_path / "r").iterdir() if p.name.startswith(".")) == []


def test_training_a_finished_run_further_is_unfinished_until_tested(tmp_path, monkeypatch):
    quick = dict(backend="numpy", limit_train=100, limit_test=20, no_progress=True)
    sn.train("mlp", out=str(tmp_path / "r"), epochs=1, **quick)
    with monkeypatch.context() as m:
        send_at_step(m, signal.SIGINT, 2)
        with pytest.raises(Interrupted):
            Run.resume(tmp_path / "r").train(epochs=2, no_progress=True)
    meta = checkpoint.load_checkpoint(tmp_path / "r" / "checkpoint.npz").meta
    assert not meta["finished"] and meta["config"]["epochs"] == 2
    assert "test_accuracy" not in read_metrics(tmp_path / "r")
    run = Run.resume(tmp_path / "r").train(no_progress=True)
    assert run.finished and len(run.history) == 2 and "test_accuracy" in read_metrics(run.out)


def test_nothing_to_train_changes_nothing(python_run, capsys):
    before = (python_run.out / "checkpoint.npz").read_bytes()
    for extra in ([], ["--epochs", "1"], ["--epochs", "2"]):
        code, stdout, err = cli(capsys, "train", "--resume", python_run.out, *extra)
        assert code == 0 and stdout == ""
        assert "nothing to train" in err and "--epochs N with N > 2" in err
    with pytest.raises(NothingToTrain, match="epochs=N"):
        Run.resume(python_run.out).train(epochs=2)
    assert (python_run.out / "checkpoint.npz").read_bytes() == before


def _unwritable(tmp_path):
    if os.geteuid() == 0:  # root writes anywhere a permission check would stop a user
        return "/proc/self/scratchnet-run"
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o555)
    return folder / "run"


@pytest.mark.parametrize("case", ["existing file", "under a file", "unwritable"])
def test_an_unusable_out_is_refused_before_any_work(tmp_path, capsys, monkeypatch, case):
    def no_data(*args, **kwargs):
        raise AssertionError("data was loaded")
    monkeypatch.setattr(sn.run.datasets, "load", no_data)
    (tmp_path / "file").write_text("x")
    out = {"existing file": tmp_path / "file", "under a file": tmp_path / "file" / "run",
           "unwritable": _unwritable(tmp_path)}[case]
    code, _, err = cli(capsys, "train", "--model", "mlp", "--out", out, "--no-progress")
    assert code == 2
    assert_one_line_error(err, f"--out {out}")
    with pytest.raises(SettingsError, match="out="):
        Run.create("mlp", out=str(out))
    assert (tmp_path / "file").read_text() == "x"


def _idx(path, magic, shape):
    header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in shape)
    path.write_bytes(header)


def test_an_empty_training_set_is_refused(tmp_path, capsys):
    from scratchnet.data.resources import SHIPPED_MNIST_DIR
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        os.symlink(os.path.join(SHIPPED_MNIST_DIR, name), tmp_path / name)
    _idx(tmp_path / "train-images-idx3-ubyte", 0x803, (0, 28, 28))
    _idx(tmp_path / "train-labels-idx1-ubyte", 0x801, (0,))
    code, _, err = cli(capsys, "train", "--model", "mlp", "--data-dir", tmp_path,
                       "--out", tmp_path / "r", "--no-progress", "--limit-test", "10")
    assert code == 1
    assert_one_line_error(err, "holds no images", "nothing to train on")
    assert not (tmp_path / "r").exists()


def test_messages_name_flags_not_keywords(tmp_path, capsys):
    code, _, err = cli(capsys, "train", "--model", "mlp", "--data-dir", tmp_path / "none",
                       "--out", tmp_path / "r")
    assert code == 1
    assert_one_line_error(err, "--download")
    assert "=" not in err.replace("(", " ")  # no data_dir= / download=True
    code, _, err = cli(capsys, "train", "--model", "mlp", "--n-train", "5")
    assert code == 2
    assert_one_line_error(err, "--n-train applies to the two-digit models")
    with pytest.raises(SettingsError, match="n_train= applies"):
        sn.train("mlp", n_train=5)


def test_python_settings_are_checked_like_flags():
    with pytest.raises(SettingsError, match="epochs=0: expected a positive integer"):
        sn.train("mlp", epochs=0)
    with pytest.raises(SettingsError, match="lr=nan"):
        Run.create("mlp", lr=float("nan"))
    with pytest.raises(TypeError, match="bogus"):
        Run.create("mlp", bogus=1)
    with pytest.raises(SettingsError, match="model=NAME"):
        Run.create()


def test_version(capsys):
    code, stdout, _ = cli(capsys, "--version")
    assert code == 0 and stdout.strip() == f"scratchnet {sn.__version__}"


@pytest.mark.parametrize("reader", ["head -1", "true"])
def test_evaluate_into_a_closed_pipe_exits_quietly(python_run, reader):
    command = (f"{sys.executable} -m scratchnet evaluate {python_run.out} --limit-test 50 "
               f"--backend numpy | {reader}")
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    assert done.stderr == ""
    if reader == "true":  # gone before the first write: the write fails for sure
        assert done.returncode == 128 + signal.SIGPIPE
    else:
        assert done.stdout.startswith("mitxcnn on 50 mnist test images")
        assert done.returncode in (0, 128 + signal.SIGPIPE)


def test_predict_reports_bad_files_and_predicts_the_rest(python_run, tmp_path, capsys):
    images, _ = load_mnist("test")
    good = tmp_path / "good.png"
    Image.fromarray(images[0]).save(good)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    code, stdout, err = cli(capsys, "predict", python_run.out, bad, good, tmp_path / "gone.png")
    assert code == 1
    rows = stdout.splitlines()
    assert len(rows) == 2 and rows[1].startswith(str(good))
    lines = err.splitlines()
    assert len(lines) == 2 and "bad.png" in lines[0] and "gone.png" in lines[1]
    assert all(line.startswith("scratchnet: error: ") for line in lines)


def test_fashion_class_names_in_the_per_class_table(python_run, tmp_path, capsys):
    from scratchnet.data.resources import SHIPPED_MNIST_DIR
    for name in os.listdir(SHIPPED_MNIST_DIR):  # MNIST's files standing in for Fashion-MNIST
        os.symlink(os.path.join(SHIPPED_MNIST_DIR, name), tmp_path / name)
    code, stdout, err = cli(capsys, "evaluate", python_run.out, "--dataset", "fashion-mnist",
                            "--data-dir", tmp_path, "--limit-test", "50")
    assert code == 0, err
    assert "per-class accuracy: T-shirt/top: " in stdout and "Ankle boot: " in stdout


def test_evaluate_normalize_overrides_the_runs(python_run, capsys):
    assert main(["evaluate", "--help"]) == 0
    assert "--normalize MEAN STD" in capsys.readouterr().out
    plain = python_run.evaluate(limit_test=50)
    other = python_run.evaluate(limit_test=50, normalize=(0.5, 0.25))
    code, stdout, _ = cli(capsys, "evaluate", python_run.out, "--limit-test", "50",
                          "--normalize", "0.5", "0.25")
    assert code == 0 and f"loss {other['loss']:.4f}" in stdout
    assert other["loss"] != plain["loss"]
    code, _, err = cli(capsys, "evaluate", python_run.out, "--normalize", "0", "0")
    assert code == 2
    assert_one_line_error(err, "--normalize", "positive std")


SCHEDULERS = [{"name": "StepLR", "step_size": 1, "gamma": 0.5},
              {"name": "ReduceLROnPlateau", "factor": 0.5, "patience": 0, "threshold": 10.0}]


@pytest.mark.parametrize("scheduler", SCHEDULERS, ids=lambda s: s["name"])
def test_a_recipes_scheduler_steps_per_epoch_and_resumes_exactly(tmp_path, monkeypatch,
                                                                  scheduler):
    import dataclasses
    monkeypatch.setitem(sn.recipes.RECIPES, "mlp", dataclasses.replace(
        sn.recipes.RECIPES["mlp"], scheduler=scheduler))
    quick = dict(backend="numpy", limit_train=400, limit_test=50, epochs=3, no_progress=True)
    whole = sn.train("mlp", out=str(tmp_path / "whole"), **quick)
    assert [r["lr"] for r in whole.history] == [0.1, 0.05, 0.025]
    assert whole.scheduler.state_dict() == \
        checkpoint.load_checkpoint(whole.checkpoint_file).meta["scheduler"]
    with monkeypatch.context() as m:
        send_at_step(m, signal.SIGINT, 15)  # 12 batches per epoch: epoch 2, batch 3
        with pytest.raises(Interrupted):
            sn.train("mlp", out=str(tmp_path / "parts"), **quick)
    monkeypatch.setitem(sn.recipes.RECIPES, "mlp", sn.recipes.Recipe("sgd", 1.0, 8, 1))
    resumed = Run.resume(tmp_path / "parts").train(no_progress=True)  # the run's own scheduler
    assert [r["lr"] for r in resumed.history] == [0.1, 0.05, 0.025]
    assert_same_checkpoint(tmp_path / "parts", tmp_path / "whole")


@pytest.fixture(scope="module")
def mnist_cnn_pt(tmp_path_factory):
    """What pytorch/examples' mnist/main.py --save-model writes, from a torch twin."""
    import torch
    from reference import models as ref_models
    torch.manual_seed(0)
    twin = ref_models.build("examplenet")
    path = tmp_path_factory.mktemp("torch") / "mnist_cnn.pt"
    torch.save(twin.state_dict(), path)  # as the example saves it
    return twin, path


def test_evaluate_pytorch_examples_mnist_cnn_pt(mnist_cnn_pt, capsys):
    from tests.test_cli import torch_accuracy
    twin, path = mnist_cnn_pt
    code, stdout, err = cli(capsys, "evaluate", path, "--limit-test", "200", "--backend", "numpy")
    assert code == 0, err
    assert stdout.startswith("examplenet on 200 mnist test images")  # not lenet: shapes differ
    expected = torch_accuracy(twin, (0.1307, 0.3081), 200)
    assert f"accuracy {100 * expected:.2f}%" in stdout


def test_export_writes_what_the_torch_twin_loads(mnist_cnn_pt, tmp_path, capsys):
    import torch
    from reference import models as ref_models
    twin, path = mnist_cnn_pt
    code, _, err = cli(capsys, "export", path, tmp_path / "again.pth")
    assert code == 0, err
    loaded = ref_models.build("examplenet")
    loaded.load_state_dict(torch.load(tmp_path / "again.pth", weights_only=True))
    for name, value in twin.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_find_lists_run_folders_newest_first(python_run, tmp_path):
    from scratchnet.run import find
    other = tmp_path / "runs" / "b"
    sn.train("mlp", out=str(other), backend="numpy", limit_train=100, limit_test=20, epochs=1,
             no_progress=True)
    (tmp_path / "runs" / "not-a-run").mkdir()
    assert find([tmp_path / "runs"]) == [other.resolve()]
    assert find([other / "checkpoint.npz", python_run.out, tmp_path / "runs"]) == \
        [other.resolve(), python_run.out.resolve()]


def test_keywords_are_the_flags_with_their_defaults(capsys):
    import inspect
    import re
    from scratchnet.run import TRAIN_SETTINGS
    for command, function, extra in (("train", sn.train, {"callbacks"}),
                                     ("evaluate", Run.evaluate, {"self"})):
        assert main([command, "--help"]) == 0
        help_text = capsys.readouterr().out
        flags = set(re.findall(r"^ +--([a-z][a-z-]+)", help_text, re.MULTILINE)) - {"help"}
        parameters = inspect.signature(function).parameters
        names = {name.replace("_", "-") for name in parameters} - extra
        assert names - {"model"} == flags - {"model"}  # evaluate: Run.load takes the model
        for name, p in parameters.items():
            if name in TRAIN_SETTINGS and name != "batch_size":
                assert p.default == TRAIN_SETTINGS[name][1], name


def test_a_scheduler_from_the_command_line_or_python(tmp_path, capsys):
    quick = ["--backend", "numpy", "--limit-train", "400", "--limit-test", "50", "--epochs", "3",
             "--no-progress"]
    code, stdout, err = cli(capsys, "train", "--model", "mlp", *quick, "--out", tmp_path / "cli",
                            "--scheduler", "MultiStepLR:milestones=[1;2],gamma=0.5")
    assert code == 0, err
    assert "MultiStepLR milestones [1, 2] gamma 0.5" in stdout
    run = sn.train("mlp", backend="numpy", limit_train=400, limit_test=50, epochs=3,
                   no_progress=True, out=str(tmp_path / "py"),
                   scheduler={"name": "MultiStepLR", "milestones": [1, 2], "gamma": 0.5})
    assert [r["lr"] for r in run.history] == [0.1, 0.05, 0.025]
    assert_same_checkpoint(tmp_path / "cli", tmp_path / "py")
    for spec, fragment in (("Bogus", "no scheduler 'Bogus'"), ("StepLR", "'step_size'"),
                           ("StepLR:step_size=x", "'x' is not a number")):
        code, _, err = cli(capsys, "train", "--model", "mlp", "--scheduler", spec)
        assert code == 2
        assert_one_line_error(err, f"--scheduler {spec}", fragment)
    none = Run.create("examplenet", scheduler="none", out=str(tmp_path / "none"))
    assert none.scheduler is None and none.config["scheduler"] == {}
    assert Run.create("examplenet", out=str(tmp_path / "ex")).scheduler.gamma == 0.7
