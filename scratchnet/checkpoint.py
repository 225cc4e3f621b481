"""Weight files: scratchnet checkpoints (.npz) and PyTorch state dicts (.pt / .pth).

A checkpoint is a plain ``.npz`` of named arrays, readable with ``np.load(allow_pickle=False)``:

- ``model/<key>``: each weight, under torch's state-dict key (``model/conv_layers.0.weight``);
- ``optimizer/<index>/<name>``: each optimizer-state array (``momentum_buffer``, ``exp_avg``, ...);
- ``meta``: a 0-d string array holding JSON: format and version, model name, the run's
  arguments, epoch and batch position, RNG states, metrics so far, and the optimizer's
  non-array state (``step``) and ``param_groups``.

Files are written to a temporary name in the same folder and renamed over the target, so a
crash or Ctrl-C mid-write never leaves a half-written checkpoint under the real name.
"""
import json
import os
import pickle
import warnings
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from .data.npz import npz_headers
from .fileio import atomic_write

FORMAT = "scratchnet-checkpoint"
VERSION = 1
TORCH_SUFFIXES = (".pt", ".pth")
# keys under which training scripts commonly nest the model's state dict
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")


class CheckpointError(ValueError):
    """A weight file is missing, corrupt, truncated, or does not fit the model asked for."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns: ``meta`` (dict), weights, optimizer state or None."""

    meta: dict
    model_state: "OrderedDict[str, np.ndarray]"
    optimizer_state: dict | None = field(default=None)


def _to_json_number(value):
    """numpy scalars -> Python numbers, which JSON writes exactly (floats round-trip by repr)."""
    return value.item() if isinstance(value, np.generic) else value


def save_checkpoint(path, meta, model_state, optimizer_state=None):
    """Write ``model_state`` (name -> ndarray), ``optimizer_state`` (torch layout) and ``meta``.

    ``meta`` must be JSON-serialisable; ``format``, ``version`` and the optimizer's non-array
    state are added to it.
    """
    arrays = {f"model/{k}": np.asarray(v) for k, v in model_state.items()}
    meta = {"format": FORMAT, "version": VERSION, **meta}
    if optimizer_state is not None:
        scalars = {}
        for idx, entries in optimizer_state["state"].items():
            for name, value in entries.items():
                if isinstance(value, np.ndarray):
                    arrays[f"optimizer/{idx}/{name}"] = value
                else:
                    scalars.setdefault(str(idx), {})[name] = _to_json_number(value)
        meta["optimizer"] = {"scalars": scalars,
                             "param_groups": optimizer_state["param_groups"],
                             "indices": [int(i) for i in optimizer_state["state"]]}
    arrays["meta"] = np.array(json.dumps(meta, default=_to_json_number))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _read_npz(path):
    """Every array of the .npz at ``path``, read eagerly so a damaged file fails here.

    The members' headers are checked first (see :func:`scratchnet.data.npz.npz_headers`):
    pickled objects and sizes the file cannot hold are refused before anything is allocated.
    """
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        npz_headers(path, error=CheckpointError)
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, zlib.error) as e:
        raise CheckpointError(
            f"{path}: not a readable checkpoint (corrupt or truncated .npz: {e})") from None


def _group_from_json(group):
    # JSON turns tuples (Adam's betas) into lists; torch keeps only "params" a list
    return {k: (v if k == "params" or not isinstance(v, list) else tuple(v))
            for k, v in group.items()}


def load_checkpoint(path):
    """Read a checkpoint written by :func:`save_checkpoint`; CheckpointError if it is not one."""
    path = os.fspath(path)
    arrays = _read_npz(path)
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except KeyError:
        raise CheckpointError(f"{path}: not a scratchnet checkpoint (no 'meta' entry)") from None
    except ValueError as e:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a scratchnet checkpoint (format is not {FORMAT!r})")
    if meta.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {meta['version']} is newer than this scratchnet "
            f"reads ({VERSION}); upgrade scratchnet")
    model_state = OrderedDict(
        (k[len("model/"):], v) for k, v in arrays.items() if k.startswith("model/"))
    optimizer_state = None
    if "optimizer" in meta:
        opt = meta.pop("optimizer")
        state = {i: dict(opt["scalars"].get(str(i), {})) for i in opt["indices"]}
        for name, value in arrays.items():
            if name.startswith("optimizer/"):
                _, idx, key = name.split("/", 2)
                state[int(idx)][key] = value
        optimizer_state = {"state": state,
                           "param_groups": [_group_from_json(g) for g in opt["param_groups"]]}
    return Checkpoint(meta, model_state, optimizer_state)


def is_torch_file(path):
    """True when ``path`` names a PyTorch file (``.pt`` / ``.pth``) rather than a checkpoint."""
    return os.fspath(path).lower().endswith(TORCH_SUFFIXES)


def _import_torch(path, action):
    try:
        with warnings.catch_warnings():  # torch may warn on import (e.g. about numpy)
            warnings.simplefilter("ignore")
            import torch
    except ImportError:
        raise CheckpointError(
            f"{path}: {action} needs PyTorch, which is not installed "
            f"(pip install torch)") from None
    return torch


def _unwrap(obj):
    """The name -> tensor mapping inside what torch.load returned, or None."""
    import torch
    if isinstance(obj, dict):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        for key in _NESTED_KEYS:
            if key in obj:
                return _unwrap(obj[key])
    return None


def load_torch_state_dict(path):
    """A PyTorch state dict saved with ``torch.save(model.state_dict(), path)``, as ndarrays.

    Loaded with ``torch.load(weights_only=True)`` (no code from the file runs). A dict that nests
    the state dict under ``state_dict`` / ``model_state_dict`` / ``model`` is accepted, and a
    ``module.`` prefix (from ``nn.DataParallel``) is dropped.
    """
    path = os.fspath(path)
    torch = _import_torch(path, "reading a PyTorch file")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    try:
        # torch warns about the file's age or storage types before failing or loading; the
        # user needs one error line, or none
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: not a plain state dict; torch.load(weights_only=True) refused it "
            f"({first}); save model.state_dict() rather than the model") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, ValueError... on damaged files
        detail = " ".join(str(e).split())[:200]
        if isinstance(e, KeyError) or not detail:  # a foreign file: the key is meaningless
            detail = "not what torch.save writes, or damaged"
        raise CheckpointError(f"{path}: not a readable PyTorch file ({detail})") from None
    state = _unwrap(obj)
    if state is None:
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return OrderedDict((k, v.detach().cpu().numpy().copy()) for k, v in state.items())


def save_torch_state_dict(path, model_state, expected=None, source=None):
    """Write ``model_state`` (name -> ndarray) as a torch state dict of tensors, atomically.

    expected: what the weights must fit, checked before anything is written: a model name
    (``"lenet"``), a Module, or a state dict of name -> array or shape. NaN or infinite
    weights are refused too, with a CheckpointError naming the tensor and ``source`` (where
    the weights came from; default ``path``); ``path`` is then left as it was.
    """
    torch = _import_torch(path, "exporting to PyTorch")
    source = os.fspath(path) if source is None else source
    if expected is not None:
        check_state_shapes(model_state, expected, source)
    check_finite(model_state, source)
    tensors = OrderedDict((k, torch.tensor(np.array(v))) for k, v in model_state.items())
    atomic_write(path, lambda f: torch.save(tensors, f))


def check_finite(model_state, source):
    """CheckpointError naming the first tensor of ``model_state`` holding NaN or infinity.

    Such weights come from a run that diverged; evaluating or exporting them gives nonsense
    (accuracy at chance, loss nan) that looks like a result.
    """
    for key, value in model_state.items():
        value = np.asarray(value)
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            bad = int(value.size - np.count_nonzero(np.isfinite(value)))
            raise CheckpointError(
                f"{source}: tensor {key} holds {bad} NaN or infinite value"
                f"{'s' if bad != 1 else ''} (of {value.size}), so every output would be "
                f"meaningless (a diverged training run leaves such weights)")


def model_shapes(name):
    """{state-dict key: shape} of the registered model ``name``, leaving the RNG untouched."""
    from . import models
    from . import random as sn_random
    rng_state = sn_random.get_rng_state()  # building a model draws initial weights
    try:
        return _shapes(models.build(name).state_dict())
    finally:
        sn_random.set_rng_state(rng_state)


def _expected_shapes(expected):
    if isinstance(expected, str):
        return model_shapes(expected), f"model {expected!r}"
    if hasattr(expected, "state_dict"):
        return _shapes(expected.state_dict()), f"model {type(expected).__name__}"
    return {k: tuple(v) if isinstance(v, (tuple, list)) else tuple(np.shape(v))
            for k, v in expected.items()}, "the model"


def check_state_shapes(model_state, expected, source):
    """CheckpointError unless ``model_state`` has exactly the keys and shapes of ``expected``.

    expected: a model name, a Module, or a state dict (name -> array, or name -> shape).
    The message lists missing and unexpected keys and every shape that differs.
    """
    wanted, what = _expected_shapes(expected)
    have = _shapes(model_state)
    missing = [k for k in wanted if k not in have]
    unexpected = [k for k in have if k not in wanted]
    differ = [f"{k} is {have[k]}, expected {wanted[k]}" for k in wanted
              if k in have and have[k] != wanted[k]]
    problems = []
    if missing:
        problems.append("missing " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected " + ", ".join(unexpected))
    if differ:
        problems.append("shape of " + "; ".join(differ))
    if problems:
        raise CheckpointError(f"{source}: the weights do not fit {what}: " + "; ".join(problems))


def _shapes(state):
    return {k: tuple(np.shape(v)) for k, v in state.items()}


def infer_model(model_state, candidates=None):
    """The one model name whose parameters have exactly ``model_state``'s keys and shapes."""
    from . import models
    wanted = _shapes(model_state)
    matches = [name for name in (candidates or models.names()) if model_shapes(name) == wanted]
    if len(matches) != 1:
        keys = ", ".join(list(wanted)[:4]) + (", ..." if len(wanted) > 4 else "")
        what = "none" if not matches else "several (" + ", ".join(matches) + ")"
        raise CheckpointError(
            f"the weights (keys {keys}) match {what} of the models "
            f"{', '.join(candidates or models.names())}; pass --model NAME")
    return matches[0]


def load_weights(model, model_state, source, name):
    """Copy ``model_state`` into ``model``; CheckpointError naming ``source`` if it doesn't fit
    or holds NaN or infinite weights."""
    check_finite(model_state, source)
    try:
        model.load_state_dict(model_state)
    except (KeyError, ValueError) as e:
        reason = e.args[0] if e.args else str(e)
        raise CheckpointError(f"{source}: weights do not fit model {name!r}: {reason}") from None
