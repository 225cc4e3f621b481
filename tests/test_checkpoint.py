"""Checkpoints (.npz) and PyTorch state dicts: round trips, damage, and models that don't fit."""
import json
import os
import sys
import warnings

import numpy as np
import pytest
import torch

import scratchnet as sn
from scratchnet import checkpoint
from scratchnet.checkpoint import CheckpointError
from reference import convert
from reference import models as ref_models

META = {"model": "mlp", "epoch": 3, "rng_state": sn.random.get_rng_state(), "x": 0.1 + 0.2}


def stepped_adam(model, steps=2):
    """An Adam that has taken ``steps`` steps on ``model`` (so it has exp_avg, exp_avg_sq, step)."""
    opt = sn.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        for p in model.parameters():
            p.grad = np.full_like(p.data, 0.5)
        opt.step()
    return opt


def test_round_trip_keeps_every_array_bitwise_and_the_metadata(tmp_path):
    sn.manual_seed(0)
    model = sn.models.build("mlp", dtype=np.float64)
    opt = stepped_adam(model)
    path = tmp_path / "c.npz"
    checkpoint.save_checkpoint(path, META, model.state_dict(), opt.state_dict())

    ckpt = checkpoint.load_checkpoint(path)
    assert ckpt.meta["x"] == META["x"] and ckpt.meta["rng_state"] == META["rng_state"]
    assert list(ckpt.model_state) == list(model.state_dict())
    for k, v in model.state_dict().items():
        assert ckpt.model_state[k].dtype == v.dtype and np.array_equal(ckpt.model_state[k], v)
    saved = opt.state_dict()
    assert ckpt.optimizer_state["param_groups"] == saved["param_groups"]
    assert isinstance(ckpt.optimizer_state["param_groups"][0]["betas"], tuple)
    for idx, entries in saved["state"].items():
        for name, value in entries.items():
            assert np.array_equal(ckpt.optimizer_state["state"][idx][name], value), (idx, name)


def test_loaded_optimizer_state_continues_exactly(tmp_path):
    sn.manual_seed(0)
    model = sn.models.build("mlp")
    opt = stepped_adam(model)
    path = tmp_path / "c.npz"
    checkpoint.save_checkpoint(path, META, model.state_dict(), opt.state_dict())
    ckpt = checkpoint.load_checkpoint(path)
    twin = sn.models.build("mlp")
    twin.load_state_dict(ckpt.model_state)
    twin_opt = sn.optim.Adam(twin.parameters(), lr=1e-3)
    twin_opt.load_state_dict(ckpt.optimizer_state)
    for m, o in ((model, opt), (twin, twin_opt)):
        for p in m.parameters():
            p.grad = np.full_like(p.data, -0.25)
        o.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert np.array_equal(a.data, b.data)


def test_checkpoint_is_a_plain_npz_of_named_arrays(tmp_path):
    model = sn.models.build("mlp")
    path = tmp_path / "c.npz"
    checkpoint.save_checkpoint(path, META, model.state_dict())
    with np.load(path, allow_pickle=False) as npz:
        assert set(npz.files) == {"meta"} | {f"model/{k}" for k in model.state_dict()}
        assert json.loads(str(npz["meta"]))["format"] == checkpoint.FORMAT
    assert checkpoint.load_checkpoint(path).optimizer_state is None


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "c.npz"
    checkpoint.save_checkpoint(path, META, sn.models.build("mlp").state_dict())
    before = path.read_bytes()

    def write(f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        checkpoint.atomic_write(path, write)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.npz"]


def damaged(tmp_path, kind):
    path = tmp_path / "c.npz"
    checkpoint.save_checkpoint(path, META, sn.models.build("mlp").state_dict())
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "flipped":  # a byte inside the first array's data: the zip CRC catches it
        path.write_bytes(data[:200] + bytes([data[200] ^ 0xFF]) + data[201:])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a checkpoint")
    elif kind == "no meta":
        np.savez(path, w=np.zeros(3))
    elif kind == "other npz":
        np.savez(path, meta=np.array(json.dumps({"format": "something else"})))
    elif kind == "bad json":
        np.savez(path, meta=np.array("{not json"))
    elif kind == "pickled":
        np.savez(path, meta=np.array([{"a": 1}], dtype=object))
    elif kind == "newer":
        np.savez(path, meta=np.array(json.dumps({"format": checkpoint.FORMAT, "version": 99})))
    elif kind == "folder":
        path.unlink()
        path.mkdir()
    elif kind == "missing":
        path.unlink()
    return path


@pytest.mark.parametrize("kind", ["truncated", "flipped", "empty", "text", "no meta", "other npz",
                                  "bad json", "pickled", "newer", "folder", "missing"])
def test_damaged_or_foreign_files_raise_checkpoint_error_naming_the_file(tmp_path, kind):
    path = damaged(tmp_path, kind)
    with pytest.raises(CheckpointError, match=str(path).replace("\\", "\\\\")):
        checkpoint.load_checkpoint(path)


@pytest.mark.parametrize("name", sn.models.names())
def test_infer_model_from_torch_twin_state_dict(tmp_path, name):
    path = tmp_path / f"{name}.pth"
    torch.save(ref_models.build(name).state_dict(), path)
    state = checkpoint.load_torch_state_dict(path)
    assert checkpoint.infer_model(state) == name


def test_torch_state_dict_round_trip_and_export(tmp_path):
    twin = ref_models.build("lenet")
    path = tmp_path / "lenet.pt"
    torch.save(twin.state_dict(), path)
    state = checkpoint.load_torch_state_dict(path)
    for k, v in twin.state_dict().items():
        assert np.array_equal(state[k], v.numpy())
    out = tmp_path / "again.pth"
    checkpoint.save_torch_state_dict(out, state)
    again = torch.load(out, weights_only=True)
    assert list(again) == list(twin.state_dict())
    assert all(torch.equal(again[k], v) for k, v in twin.state_dict().items())


def test_nested_and_data_parallel_state_dicts_are_unwrapped(tmp_path):
    twin = ref_models.build("mlp")
    path = tmp_path / "train.pt"
    wrapped = {f"module.{k}": v for k, v in twin.state_dict().items()}
    torch.save({"epoch": 3, "model_state_dict": wrapped, "optimizer_state_dict": {}}, path)
    state = checkpoint.load_torch_state_dict(path)
    assert list(state) == list(twin.state_dict())


def test_pickled_model_and_garbage_torch_files_are_refused(tmp_path):
    whole = tmp_path / "model.pth"
    torch.save(ref_models.build("mlp"), whole)  # the whole module, not its state_dict
    with pytest.raises(CheckpointError, match="state_dict"):
        checkpoint.load_torch_state_dict(whole)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00\x01 not torch")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        checkpoint.load_torch_state_dict(garbage)
    numbers = tmp_path / "numbers.pt"
    torch.save({"a": 1}, numbers)
    with pytest.raises(CheckpointError, match="not a state dict"):
        checkpoint.load_torch_state_dict(numbers)


def test_torch_missing_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails
    with pytest.raises(CheckpointError, match="needs PyTorch"):
        checkpoint.load_torch_state_dict(tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="needs PyTorch"):
        checkpoint.save_torch_state_dict(tmp_path / "x.pth", {})


def test_weights_of_another_model_are_refused():
    state = sn.models.build("mlp").state_dict()
    with pytest.raises(CheckpointError, match="mlp128"):
        checkpoint.load_weights(sn.models.build("mlp128"), state, "w.npz", "mlp128")
    with pytest.raises(CheckpointError, match="missing keys"):
        checkpoint.load_weights(sn.models.build("lenet"), state, "w.npz", "lenet")
    with pytest.raises(CheckpointError, match="none"):
        checkpoint.infer_model({"fc.weight": np.zeros((3, 3))})


def test_infer_model_leaves_the_global_generator_alone():
    sn.manual_seed(5)
    before = sn.random.get_rng_state()
    checkpoint.infer_model(convert.state_dict_from_torch(ref_models.build("mlp").state_dict()))
    assert sn.random.get_rng_state() == before


def test_export_refuses_weights_that_do_not_fit_before_writing(tmp_path):
    state = sn.models.build("lenet").state_dict()
    key = next(iter(state))
    bad = dict(state, **{key: np.zeros((3, 3), dtype=np.float32)})
    out = tmp_path / "lenet.pth"
    for expected in ("lenet", sn.models.build("lenet"), state):
        with pytest.raises(CheckpointError, match=rf"c.npz: the weights do not fit .*shape of "
                                                  rf"{key} is \(3, 3\), expected "):
            checkpoint.save_torch_state_dict(out, bad, expected=expected, source="c.npz")
    missing = {k: v for k, v in state.items() if k != key}
    with pytest.raises(CheckpointError, match=f"missing {key}"):
        checkpoint.save_torch_state_dict(out, missing, expected="lenet")
    with pytest.raises(CheckpointError, match="unexpected extra"):
        checkpoint.save_torch_state_dict(out, dict(state, extra=np.zeros(1)), expected="lenet")
    assert not out.exists() and os.listdir(tmp_path) == []
    checkpoint.save_torch_state_dict(out, state, expected="lenet")
    twin = ref_models.build("lenet")
    twin.load_state_dict(torch.load(out, weights_only=True))  # what passes, torch loads


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused_for_use_and_export(tmp_path, bad):
    model = sn.models.build("mlp")
    state = model.state_dict()
    key = list(state)[2]
    state[key] = state[key].copy()
    state[key].flat[[0, 5]] = bad
    path = tmp_path / "c.npz"
    checkpoint.save_checkpoint(path, META, state)  # a diverged run's state is still saved
    loaded = checkpoint.load_checkpoint(path).model_state
    message = rf"c.npz: tensor {key} holds 2 NaN or infinite values \(of {state[key].size}\)"
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load_weights(sn.models.build("mlp"), loaded, path, "mlp")
    with pytest.raises(CheckpointError, match=message):
        checkpoint.save_torch_state_dict(tmp_path / "x.pth", loaded, source=path)
    assert not (tmp_path / "x.pth").exists()
    pth = tmp_path / "diverged.pth"
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, pth)
    with pytest.raises(CheckpointError, match=rf"diverged.pth: tensor {key} holds 2"):
        checkpoint.load_weights(sn.models.build("mlp"), checkpoint.load_torch_state_dict(pth),
                                pth, "mlp")


def test_torch_warnings_while_loading_are_not_shown(tmp_path, monkeypatch, recwarn):
    def noisy_load(*args, **kwargs):
        warnings.warn("storage types are deprecated", UserWarning)
        raise RuntimeError("PytorchStreamReader failed reading zip archive")

    path = tmp_path / "w.pth"
    path.write_bytes(b"PK")
    monkeypatch.setattr(torch, "load", noisy_load)
    warnings.simplefilter("always")
    with pytest.raises(CheckpointError, match="w.pth: not a readable PyTorch file"):
        checkpoint.load_torch_state_dict(path)
    assert not recwarn.list


def test_garbage_torch_file_message_says_what_it_is(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"hello world, not torch")
    with pytest.raises(CheckpointError) as info:
        checkpoint.load_torch_state_dict(garbage)
    assert str(info.value).startswith(f"{garbage}: not a readable PyTorch file (")
    assert "KeyError" not in str(info.value)
