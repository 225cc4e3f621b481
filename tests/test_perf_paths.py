"""The fast paths are the same arithmetic: optimizer kernels and their serial/parallel splits."""
import numpy as np
import pytest

from scratchnet import backend, optim
from scratchnet.nn import Parameter
from scratchnet.optim import kernels
from tests.test_optim import ADADELTA_CONFIGS, ADAM_CONFIGS, SGD_CONFIGS

CLASSES = {"SGD": optim.SGD, "Adam": optim.Adam, "AdamW": optim.AdamW,
           "Adadelta": optim.Adadelta}
CASES = ([("SGD", c) for c in SGD_CONFIGS] + [("Adam", c) for c in ADAM_CONFIGS]
         + [("AdamW", c) for c in ADAM_CONFIGS] + [("Adadelta", c) for c in ADADELTA_CONFIGS])
SHAPES = ((7, 5), (300,), (2, 3, 4))


def _trajectory(name, config, dtype, backend_name, steps=4):
    rng = np.random.default_rng(5)
    params = [Parameter(rng.standard_normal(s).astype(dtype)) for s in SHAPES]
    opt = CLASSES[name](params, **config)
    with backend.use_backend(backend_name):
        for _ in range(steps):
            for p in params:
                p.grad = rng.standard_normal(p.shape).astype(dtype)
            # a NaN-free tiny gradient too, where Adam's rounding matters most
            params[0].grad[0, 0] = dtype(1e-7)
            if backend_name == "numba":
                assert all(kernels.available(p) for p in params)
            opt.step()
    state = [{k: np.array(v) for k, v in opt.state[p].items()} for p in params]
    return [p.data for p in params], state


# NumPy 1.x promotes a float32 scalar met with a Python float to float64 (before NEP 50), so
# there the numpy update rounds some float32 Adam steps differently from the float32 kernel
NEP50 = np.lib.NumpyVersion(np.__version__) >= "2.0.0"


@pytest.mark.parametrize("dtype", [
    pytest.param(np.float32, marks=pytest.mark.skipif(
        not NEP50, reason="NumPy < 2 rounds the float32 numpy update in float64 in places")),
    np.float64])
@pytest.mark.parametrize("name,config", CASES)
def test_optimizer_kernels_equal_numpy_update_bitwise(name, config, dtype, monkeypatch):
    monkeypatch.setattr(kernels, "MIN_ELEMENTS_PLAIN", 0)  # the kernel for every SGD update
    fast, fast_state = _trajectory(name, config, dtype, "numba")
    slow, slow_state = _trajectory(name, config, dtype, "numpy")
    for a, b in zip(fast, slow):
        np.testing.assert_array_equal(a, b)
    for sa, sb in zip(fast_state, slow_state):
        assert sa.keys() == sb.keys()
        for k in sa:
            np.testing.assert_array_equal(sa[k], sb[k])


@pytest.mark.parametrize("name,config", [("SGD", SGD_CONFIGS[3]), ("SGD", SGD_CONFIGS[6]),
                                         ("Adam", ADAM_CONFIGS[3]), ("AdamW", ADAM_CONFIGS[5]),
                                         ("Adadelta", ADADELTA_CONFIGS[3])])
def test_optimizer_kernels_parallel_split_equal(name, config, monkeypatch):
    monkeypatch.setattr(kernels, "MIN_ELEMENTS_PLAIN", 0)
    serial, _ = _trajectory(name, config, np.float32, "numba")
    monkeypatch.setattr(kernels, "PARALLEL_MIN_ELEMENTS", 0)
    parallel, _ = _trajectory(name, config, np.float32, "numba")
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "Adadelta"])
def test_numba_backend_takes_the_optimizer_kernel(name, monkeypatch):
    """The bitwise checks above would also pass if the numpy update ran: count kernel calls."""
    kernel = {"SGD": "sgd_update", "Adadelta": "adadelta_update"}.get(name, "adam_update")
    calls = []
    real = getattr(kernels, kernel)
    monkeypatch.setattr(kernels, kernel, lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(kernels, "MIN_ELEMENTS_PLAIN", 0)
    _trajectory(name, {"momentum": 0.9} if name == "SGD" else {}, np.float32, "numba", steps=2)
    assert len(calls) == 2 * len(SHAPES)
