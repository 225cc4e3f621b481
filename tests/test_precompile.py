"""compile_ahead (numba_backend/precompile.py): the backward kernels compiled by a helper process
must be the kernels the process would have compiled itself.

Each check runs training steps in a fresh process with its own, empty Numba cache (so every
kernel really compiles) and compares losses and final weights bitwise with the same steps run
here, without a helper.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from scratchnet import backend, models
from scratchnet.backends.numba_backend import precompile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRAIN = '''
import hashlib
import numpy as np
from scratchnet import backend, models, nn, optim
from scratchnet.nn.module import backward_to_params


def train(name, state, ahead, steps=3, batch=50):
    """Losses of ``steps`` SGD steps on fixed random batches and a digest of the final weights."""
    backend.set_backend("numba")
    model = models.build(name)
    model.load_state_dict(state)
    model.train()
    loss_fn = nn.NLLLoss() if models.OUTPUTS[name] == "log_probs" else nn.CrossEntropyLoss()

    def loss_gradient(out, y):  # the loss as the helper walks it
        loss_fn(out, y)
        return loss_fn.backward()

    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(0)
    losses = []
    for i in range(steps):
        x = rng.standard_normal((batch, *model.input_shape)).astype(np.float32)
        y = rng.integers(0, 10, batch)
        if i == 0 and ahead:
            backend.ops().compile_ahead(model, x, opt, lambda out: loss_gradient(out, y))
        out = model(x)
        losses.append(float(loss_fn(out, y)))
        opt.zero_grad()
        backward_to_params(model, loss_fn.backward())
        opt.step()
    digest = hashlib.sha256(b"".join(p.data.tobytes() for p in model.parameters())).hexdigest()
    return losses, digest
'''

CHILD = TRAIN + '''
import json, sys
state = dict(np.load(sys.argv[2]))
if sys.argv[3] == "broken-helper":
    from scratchnet.backends.numba_backend import precompile

    def broken_walk(*args):
        raise RuntimeError("helper failed on purpose")

    precompile._walk = broken_walk
losses, digest = train(sys.argv[1], state, ahead=True)
from scratchnet.backends.numba_backend import precompile
# the hooks are gone and the helper reaped once every kernel of the step is here
print(json.dumps({"losses": losses, "digest": digest, "closed": precompile._session is None}))
'''


def _here(name, state):
    namespace = {}
    exec(TRAIN, namespace)
    with backend.use_backend("numba"):
        return namespace["train"](name, state, ahead=False)


def _fresh_process(name, state_path, cache_dir, mode="normal"):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "SCRATCHNET_COMPILE_AHEAD": "1",
           "SCRATCHNET_PRECOMPILE_DEBUG": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, name, str(state_path), mode], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["closed"], "the helper's session is still open after the steps"
    return result["losses"], result["digest"], out.stderr


def _initial_state(name, tmp_path):
    state = models.build(name).state_dict()
    path = tmp_path / f"{name}.npz"
    np.savez(path, **state)
    return state, path


@pytest.mark.skipif(not precompile.enabled(), reason="needs os.fork on Linux and the JIT on")
def test_kernels_from_the_helper_train_bitwise_like_local_ones(tmp_path):
    """lenet (per-thread conv workers and their launchers, parallel linear kernels, loss and SGD
    kernels): cold cache with the helper, then a warm start from the cache it left."""
    state, path = _initial_state("lenet", tmp_path)
    expected = _here("lenet", state)
    cache = tmp_path / "cache"

    losses, digest, log = _fresh_process("lenet", path, cache)
    assert (losses, digest) == expected
    # the helper really compiled kernels and the process really used them
    assert "child compiled" in log and "parent waited" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]

    # the kernels the process saved from the helper's results load from the cache and give
    # the same numbers; nothing is left for the helper to compile
    losses, digest, log = _fresh_process("lenet", path, cache)
    assert (losses, digest) == expected
    assert "child compiled" not in log and "Traceback" not in log, log[-3000:]


@pytest.mark.skipif(not precompile.enabled(), reason="needs os.fork on Linux and the JIT on")
def test_a_failing_helper_leaves_the_compiling_to_the_process(tmp_path):
    state, path = _initial_state("mlp", tmp_path)
    expected = _here("mlp", state)
    losses, digest, log = _fresh_process("mlp", path, tmp_path / "cache", "broken-helper")
    assert (losses, digest) == expected
    assert "helper failed on purpose" in log  # the helper did fail (its traceback is logged)
    assert "parent waited" not in log


TRAINING_LOOP = '''
import numpy as np
from scratchnet import backend, models, optim, tasks, training
backend.set_backend("numba")
model = models.build(NAME)
task = tasks.for_model(models.OUTPUTS[NAME])
opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
rng = np.random.default_rng(0)
x = (INPUT).astype(np.float32)
y = LABELS
backend.ops().compile_ahead(model, x, opt, training._loss_gradient(task, y))
model.train()
out = model(x)
task.loss(out, y)
opt.zero_grad()
from scratchnet.nn.module import backward_to_params
backward_to_params(model, task.backward())
opt.step()
from scratchnet.backends.numba_backend import precompile
print("closed" if precompile._session is None else "open")
'''


@pytest.mark.skipif(not precompile.enabled(), reason="needs os.fork on Linux and the JIT on")
@pytest.mark.parametrize("name,input,labels", [
    # the training loop's loss for a two-digit task: the model returns a pair of logits
    ("multimlp", "rng.standard_normal((32, *model.input_shape))",
     "rng.integers(0, 10, (32, 2))"),
    # a batch of mostly-zero pixels large enough for sparse_linear's path, whose choice runs
    # a small kernel the walk cannot skip (its count decides what the layer does next)
    ("mlp128", "rng.random((512, 784)) * (rng.random((512, 784)) < 0.2)",
     "rng.integers(0, 10, 512)"),
])
def test_the_helper_walks_the_training_loops_step(tmp_path, name, input, labels):
    """The training loop's step, loss included, is walked: the helper compiles kernels,
    nothing in the walk fails, the session ends."""
    code = (TRAINING_LOOP.replace("NAME", repr(name)).replace("INPUT", input)
            .replace("LABELS", labels))
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"),
           "SCRATCHNET_COMPILE_AHEAD": "1", "SCRATCHNET_PRECOMPILE_DEBUG": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-1] == "closed"
    assert "child compiled" in out.stderr and "Traceback" not in out.stderr, out.stderr[-3000:]


def test_numpy_backend_and_switch_off_do_nothing(monkeypatch):
    model = models.build("mlp")
    x = np.zeros((4, *model.input_shape), np.float32)
    assert backend.ops("numpy").compile_ahead(model, x) is None
    monkeypatch.setenv("SCRATCHNET_COMPILE_AHEAD", "0")
    assert not precompile.enabled()
    precompile.compile_ahead(model, x)
    assert precompile._session is None
