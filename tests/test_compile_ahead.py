"""compile_ahead (numba backend): its helper process fills Numba's cache with the step's kernels,
this process loads them, and the numbers are those of a step without it."""
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import scratchnet as sn
from scratchnet.backends.numba_backend import precompile
from scratchnet.nn.module import backward_to_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# In a fresh cache: (1) compile_ahead, wait for the helper, take a step: every kernel loads
# from the cache; (2) the same model without compile_ahead gives the same parameters; (3) so
# does a step taken while a helper runs (each driver's chunks in turn on this thread).
_FRESH_CACHE_SCRIPT = r"""
import json
import sys

import numpy as np
from scratchnet.backends.numba_backend import precompile
from tests.test_compile_ahead import build, step

x, y = np.random.default_rng(0).random((16, 1, 28, 28)).astype(np.float32), np.arange(16) % 10
ahead, opt = build()
precompile.compile_ahead(ahead, x, opt)
started = precompile.helper_running()
precompile.finish_compile_ahead()
step(ahead, opt, x, y)

kernels = {}
for name, module in list(sys.modules.items()):
    if name.startswith("scratchnet.") and module is not None:
        for attr, value in vars(module).items():
            # a compiled kernel (duck-typed: Numba's dispatcher class is not public)
            if hasattr(value, "py_func") and hasattr(value, "stats") and value.signatures:
                kernels[f"{name}.{attr}"] = (sum(value.stats.cache_hits.values()),
                                             sum(value.stats.cache_misses.values()))

plain, opt = build()
step(plain, opt, x, y)
while_helper, opt = build()
precompile.compile_ahead(while_helper, x, opt)
serial = precompile.helper_running()
step(while_helper, opt, x, y)
precompile.finish_compile_ahead()
print(json.dumps({
    "started": started, "serial": serial, "kernels": kernels,
    "same": all(np.array_equal(a.data, b.data)
                for a, b in zip(ahead.parameters(), plain.parameters())),
    "same_while_helper": all(np.array_equal(a.data, b.data)
                             for a, b in zip(while_helper.parameters(), plain.parameters())),
}))
"""


def build():
    """A small conv net whose conv and linear layers split their work across threads at
    batch 16, with its SGD optimizer."""
    sn.manual_seed(0)
    model = sn.nn.Sequential(sn.nn.Conv2d(1, 8, 3), sn.nn.ReLU(), sn.nn.MaxPool2d(2),
                             sn.nn.Flatten(), sn.nn.Linear(8 * 13 * 13, 64), sn.nn.ReLU(),
                             sn.nn.Linear(64, 10))
    return model, sn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def step(model, opt, x, y):
    loss = sn.nn.CrossEntropyLoss()
    loss(model(x), y)
    opt.zero_grad()
    backward_to_params(model, loss.backward())
    opt.step()


def test_after_the_helper_every_kernel_loads_and_the_numbers_match(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), NUMBA_NUM_THREADS="2",
               PYTHONPATH=ROOT, SCRATCHNET_BACKEND="numba")
    env.pop("SCRATCHNET_COMPILE_AHEAD", None)
    result = subprocess.run([sys.executable, "-c", _FRESH_CACHE_SCRIPT], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["started"] and report["serial"]
    # the helper starts backward from ones: the loss's kernels compile here (serial ones)
    kernels = {name: counts for name, counts in report["kernels"].items()
               if not name.endswith("._cache_probe") and ".loss." not in name}
    assert any(name.endswith("_parallel") for name in kernels)  # the step did go parallel
    assert all(misses == 0 and hits > 0 for hits, misses in kernels.values()), \
        {k: v for k, v in kernels.items() if v[1] or not v[0]}
    assert report["same"]
    assert report["same_while_helper"]


class FailsInHelper(sn.nn.Module):
    """A model whose forward raises in any process but the one that built it."""

    def __init__(self):
        super().__init__()
        self.home = os.getpid()
        self.fc = sn.nn.Linear(4, 3)

    def forward(self, x):
        if os.getpid() != self.home:
            raise RuntimeError("a failure only the helper meets")
        return self.fc(x)


class ChecksItsValues(sn.nn.Module):
    """A model whose forward reads a layer's output: it fails on a noted step's unset values
    (here whenever a step is being noted, for a deterministic test)."""

    def __init__(self):
        super().__init__()
        self.fc = sn.nn.Linear(4, 3)

    def forward(self, x):
        from scratchnet.backends.numba_backend import common

        out = self.fc(x)
        if common._noted is not None:
            raise ValueError("the output holds no values yet")
        return out


@pytest.fixture
def cold(monkeypatch):
    """compile_ahead as with a cold cache and two threads, whatever the cache holds now."""
    monkeypatch.setattr(precompile, "cache_is_cold", lambda: True)
    monkeypatch.setattr(precompile.numba, "get_num_threads", lambda: 2)
    monkeypatch.delenv("SCRATCHNET_COMPILE_AHEAD", raising=False)


def test_a_failing_helper_warns_and_training_goes_on(cold):
    model = FailsInHelper()
    x = np.ones((2, 4), np.float32)
    precompile.compile_ahead(model, x)
    with pytest.warns(RuntimeWarning, match="a failure only the helper meets"):
        precompile.finish_compile_ahead()
    assert not precompile.helper_running()
    assert model(x).shape == (2, 3)


def test_a_model_that_reads_its_values_gets_its_step_taken_in_the_helper(cold):
    model = ChecksItsValues()
    precompile.compile_ahead(model, np.ones((2, 4), np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precompile.finish_compile_ahead()
    assert model(np.ones((2, 4), np.float32)).shape == (2, 3)


def test_a_model_that_does_not_pickle_starts_no_helper(cold):
    model, opt = build()
    model.hook = lambda: None
    precompile.compile_ahead(model, np.zeros((2, 1, 28, 28), np.float32), opt)
    assert not precompile.helper_running()


def test_switched_off_or_warm_cache_starts_no_helper(cold, monkeypatch):
    model, opt = build()
    x = np.zeros((2, 1, 28, 28), np.float32)
    monkeypatch.setenv("SCRATCHNET_COMPILE_AHEAD", "0")
    precompile.compile_ahead(model, x, opt)
    assert not precompile.helper_running()
    monkeypatch.delenv("SCRATCHNET_COMPILE_AHEAD")
    monkeypatch.setattr(precompile, "cache_is_cold", lambda: False)
    precompile.compile_ahead(model, x, opt)
    assert not precompile.helper_running()


def test_a_model_with_two_outputs_gets_its_step_compiled(cold):
    model = sn.models.build("multimlp")
    x = np.zeros((4,) + model.input_shape, np.float32)
    precompile.compile_ahead(model, x, sn.optim.SGD(model.parameters(), lr=0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precompile.finish_compile_ahead()


def test_a_recorded_step_calls_no_kernel_and_its_notes_compile_without_computing():
    from scratchnet.backends.numba_backend import activation, common

    x = np.full(4 * common.PARALLEL_MIN_WORK, -1.0, np.float32)  # large enough to split
    out = np.ones_like(x)

    def relu():
        common.launch(activation._relu_span, activation._relu_parallel, x.size, x.size, x, out)

    def relu_by_halves():
        def chunk(t):
            activation._relu_span(x, out, t * x.size // 2, (t + 1) * x.size // 2)
        common.run_split(activation._relu_parallel, chunk, 2, x, out)

    calls = common.recorded_calls(lambda: (relu(), relu_by_halves()))
    assert (out == 1).all()
    (launched_serial, launched_parallel), (split_serial, split_parallel) = calls
    launched_serial()  # an empty range
    launched_parallel()  # no chunks
    split_parallel()
    assert (out == 1).all()
    split_serial()  # thread 0's share
    assert (out[:x.size // 2] == 0).all() and (out[x.size // 2:] == 1).all()
    assert common.recorded_calls(lambda: None) == []
    relu()  # recording ended: the call is made
    assert (out == 0).all()
