"""SGD, Adam, AdamW and Adadelta against torch.optim: trajectories, state dicts and argument checks.

Both optimizers start from the same weights and receive the same random gradient at every
step, so the trajectories must agree to float64 round-off (torch fuses some multiply-adds, so
not bit for bit).
"""
import numpy as np
import pytest
import torch

from scratchnet import nn, optim

from tests.helpers import assert_close

SHAPES = ((3, 4), (5,), (2, 3, 2), (1,))
# float64 trajectories agree to round-off; this is the relative tolerance the brief promises
RTOL64 = 1e-12

SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.02, weight_decay=0.1),
    dict(lr=0.02, momentum=0.5, dampening=0.5, weight_decay=0.05, maximize=True),
    dict(lr=0.02, momentum=0.8, nesterov=True, weight_decay=0.01, maximize=True),
]
ADAM_CONFIGS = [
    dict(),
    dict(lr=0.01, amsgrad=True),
    dict(lr=0.01, weight_decay=0.1),
    dict(lr=0.01, weight_decay=0.1, amsgrad=True, maximize=True),
    dict(lr=0.003, betas=(0.3, 0.8), eps=1e-6),  # 1 - beta1 > 0.5: torch's other lerp form
    dict(lr=0.01, betas=(0.0, 0.99), weight_decay=0.02, amsgrad=True),
]
ADADELTA_CONFIGS = [
    dict(),
    dict(lr=0.5, rho=0.95, eps=1e-5),
    dict(lr=1.0, weight_decay=0.1),
    dict(lr=0.3, rho=0.5, weight_decay=0.02, maximize=True),
    dict(lr=2.0, rho=0.0, eps=1e-3),
]
PAIRS = {"SGD": (optim.SGD, torch.optim.SGD), "Adam": (optim.Adam, torch.optim.Adam),
         "AdamW": (optim.AdamW, torch.optim.AdamW),
         "Adadelta": (optim.Adadelta, torch.optim.Adadelta)}
CASES = ([("SGD", c) for c in SGD_CONFIGS] + [("Adam", c) for c in ADAM_CONFIGS]
         + [("AdamW", c) for c in ADAM_CONFIGS] + [("Adadelta", c) for c in ADADELTA_CONFIGS])


def _make(name, config, dtype=np.float64, seed=0, groups=False):
    """Our optimizer and torch's, over equal copies of the same random weights."""
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    ours = [nn.Parameter(a.copy()) for a in init]
    theirs = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    ours_cls, torch_cls = PAIRS[name]
    if groups:
        # two groups, the second overriding the learning rate
        lr = config.get("lr", 1e-3)
        ours_params = [{"params": ours[:2]}, {"params": ours[2:], "lr": lr / 3}]
        torch_params = [{"params": theirs[:2]}, {"params": theirs[2:], "lr": lr / 3}]
    else:
        ours_params, torch_params = ours, theirs
    return (ours_cls(ours_params, **config), ours,
            torch_cls(torch_params, foreach=False, **config), theirs)


def _feed(rng, ours, theirs, step, dtype=np.float64):
    """Give both the same random gradients; the last parameter gets none every third step."""
    for i, (p, t) in enumerate(zip(ours, theirs)):
        if i == len(ours) - 1 and step % 3 == 2:
            p.grad, t.grad = None, None
            continue
        g = rng.standard_normal(p.shape).astype(dtype)
        p.grad = g.copy()
        t.grad = torch.tensor(g.copy())


def _run(opt, ours, topt, theirs, steps, rng, dtype=np.float64, start=0):
    for k in range(start, start + steps):
        _feed(rng, ours, theirs, k, dtype)
        opt.step()
        topt.step()


def _assert_params_close(ours, theirs, rtol, name="param"):
    for i, (p, t) in enumerate(zip(ours, theirs)):
        ref = t.detach().numpy()
        assert p.data.dtype == ref.dtype
        err = np.max(np.abs(p.data - ref)) / max(np.max(np.abs(ref)), 1e-30)
        assert err <= rtol, f"{name} {i}: relative error {err:.3e} > {rtol:.1e}"


def _case_id(case):
    name, config = case
    return name + "-" + ("-".join(f"{k}={v}" for k, v in config.items()) or "defaults")


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_100_steps_match_torch_float64(case):
    name, config = case
    opt, ours, topt, theirs = _make(name, config)
    _run(opt, ours, topt, theirs, 100, np.random.default_rng(1))
    _assert_params_close(ours, theirs, RTOL64)


@pytest.mark.parametrize("case", CASES[::3], ids=_case_id)
def test_param_groups_match_torch(case):
    name, config = case
    opt, ours, topt, theirs = _make(name, config, groups=True)
    _run(opt, ours, topt, theirs, 30, np.random.default_rng(2))
    _assert_params_close(ours, theirs, RTOL64)
    assert opt.param_groups[1]["lr"] == topt.param_groups[1]["lr"]


@pytest.mark.parametrize("case", CASES[::2], ids=_case_id)
def test_20_steps_match_torch_float32(case):
    """float32: parameters and state stay float32 and follow torch within the float32 promise."""
    name, config = case
    opt, ours, topt, theirs = _make(name, config, dtype=np.float32)
    _run(opt, ours, topt, theirs, 20, np.random.default_rng(3), dtype=np.float32)
    for p, t in zip(ours, theirs):
        assert_close(p.data, t, np.float32, "float32 param")
    for s in opt.state.values():
        for value in s.values():
            assert value.dtype == np.float32  # step is float32 in torch too


def _to_numpy_state_dict(sd):
    """torch's optimizer state dict with every tensor as an ndarray."""
    return {"state": {k: {n: v.numpy().copy() for n, v in s.items()}
                      for k, s in sd["state"].items()},
            "param_groups": sd["param_groups"]}


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_state_dict_matches_torch(case):
    name, config = case
    opt, ours, topt, theirs = _make(name, config, groups=True)
    _run(opt, ours, topt, theirs, 7, np.random.default_rng(4))
    sd, tsd = opt.state_dict(), _to_numpy_state_dict(topt.state_dict())
    assert list(sd["state"]) == list(tsd["state"])
    for k in tsd["state"]:
        assert list(sd["state"][k]) == list(tsd["state"][k]), f"state keys of parameter {k}"
        for key, ref in tsd["state"][k].items():
            value = sd["state"][k][key]
            assert isinstance(value, np.ndarray) and value.dtype == ref.dtype
            assert value.shape == ref.shape
            if key == "step":
                assert value == ref
            else:
                assert_close(value, ref, np.float64, f"state[{k}][{key!r}]", factor=1e-2)
    assert len(sd["param_groups"]) == len(tsd["param_groups"])
    for group, tgroup in zip(sd["param_groups"], tsd["param_groups"]):
        # torch's groups also carry its implementation switches, which scratchnet doesn't have
        assert set(tgroup) - set(group) <= {"foreach", "fused", "differentiable", "capturable"}
        assert set(group) <= set(tgroup)
        for key in group:
            assert group[key] == tgroup[key], key


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_state_dict_round_trip_resumes_identically(case):
    """Stop after 40 steps, save, load into a fresh optimizer over copied weights, go on."""
    name, config = case
    opt, ours, _, _ = _make(name, config)
    ours_cls = PAIRS[name][0]
    rng = np.random.default_rng(5)
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(60)]

    def run(opt, params, steps):
        for k in steps:
            for p, g in zip(params, grads[k]):
                p.grad = g.copy()
            opt.step()

    run(opt, ours, range(40))
    saved = opt.state_dict()
    saved_copy = {k: {n: v.copy() for n, v in s.items()} for k, s in saved["state"].items()}
    saved_params = [p.data.copy() for p in ours]
    run(opt, ours, range(40, 60))
    # the saved dict holds copies: stepping on did not change it
    for k, s in saved["state"].items():
        for n, v in s.items():
            np.testing.assert_array_equal(v, saved_copy[k][n])

    resumed = [nn.Parameter(a.copy()) for a in saved_params]
    opt2 = ours_cls(resumed, **config)
    opt2.load_state_dict(saved)
    run(opt2, resumed, range(40, 60))
    for p, q in zip(ours, resumed):
        np.testing.assert_array_equal(q.data, p.data)


@pytest.mark.parametrize("case", CASES[::2], ids=_case_id)
def test_state_dicts_cross_load_with_torch(case):
    """Our state dict loads into torch (and torch's into ours); both then continue alike."""
    name, config = case
    opt, ours, topt, theirs = _make(name, config)
    rng = np.random.default_rng(6)
    _run(opt, ours, topt, theirs, 10, rng)
    sd = opt.state_dict()
    torch_sd = {"state": {k: {n: torch.tensor(v) for n, v in s.items()}
                          for k, s in sd["state"].items()},
                "param_groups": sd["param_groups"]}
    topt2 = PAIRS[name][1]([t.detach().clone().requires_grad_() for t in theirs],
                           foreach=False)
    topt2.load_state_dict(torch_sd)
    opt2 = PAIRS[name][0]([nn.Parameter(p.data.copy()) for p in ours])
    opt2.load_state_dict(_to_numpy_state_dict(topt.state_dict()))
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    params2 = [p for g in opt2.param_groups for p in g["params"]]
    theirs2 = [t for g in topt2.param_groups for t in g["params"]]
    _run(opt2, params2, topt2, theirs2, 10, rng, start=10)
    _assert_params_close(params2, theirs2, RTOL64)


def test_state_dict_casts_to_param_dtype_and_keeps_step_float32():
    p = nn.Parameter(np.zeros(3, np.float32))
    opt = optim.Adam([p])
    opt.load_state_dict({"state": {0: {"step": 5, "exp_avg": np.ones(3),
                                       "exp_avg_sq": np.ones(3)}},
                         "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "eps": 1e-8,
                                           "weight_decay": 0, "amsgrad": False,
                                           "maximize": False, "params": [0]}]})
    s = opt.state[p]
    assert s["step"].dtype == np.float32 and s["step"].shape == () and s["step"] == 5
    assert s["exp_avg"].dtype == np.float32
    assert opt.param_groups[0]["lr"] == 0.1
    assert opt.param_groups[0]["decoupled_weight_decay"] is False  # filled from defaults


def test_adamw_load_keeps_decoupled_decay():
    p = nn.Parameter(np.zeros(2))
    sd = optim.Adam([p]).state_dict()
    opt = optim.AdamW([p])
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["decoupled_weight_decay"] is True


def test_load_state_dict_rejects_mismatched_groups():
    a, b = nn.Parameter(np.zeros(2)), nn.Parameter(np.zeros(3))
    sd = optim.SGD([a, b], lr=0.1).state_dict()
    with pytest.raises(ValueError, match="different number of parameter groups"):
        optim.SGD([{"params": [a]}, {"params": [b]}], lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="doesn't match the size of optimizer's group"):
        optim.SGD([a], lr=0.1).load_state_dict(sd)


def test_zero_grad_and_skipped_params():
    a, b = nn.Parameter(np.ones(2)), nn.Parameter(np.ones(3))
    opt = optim.SGD([a, b], lr=0.5, momentum=0.9)
    a.grad = np.ones(2)
    opt.step()
    np.testing.assert_array_equal(b.data, np.ones(3))  # grad None: untouched, no state
    assert b not in opt.state and list(opt.state_dict()["state"]) == [0]
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(a.grad, np.zeros(2))
    assert b.grad is None
    opt.zero_grad()
    assert a.grad is None


def test_named_parameters_and_closure():
    model = nn.Module()
    model.w = nn.Parameter(np.ones(2))
    opt = optim.SGD(model.named_parameters(), lr=0.1)
    assert opt.param_groups[0]["param_names"] == ["w"]
    assert opt.state_dict()["param_groups"][0]["param_names"] == ["w"]
    model.w.grad = np.ones(2)
    assert opt.step(lambda: 3.0) == 3.0
    np.testing.assert_allclose(model.w.data, 0.9)
    assert "Parameter Group 0" in repr(opt) and "lr: 0.1" in repr(opt)


def _torch_error(fn):
    with pytest.raises(ValueError) as info:
        fn()
    return str(info.value)


@pytest.mark.parametrize("name, kwargs", [
    ("SGD", dict(lr=-1)),
    ("SGD", dict(lr=0.1, momentum=-0.5)),
    ("SGD", dict(lr=0.1, weight_decay=-1e-3)),
    ("SGD", dict(lr=0.1, nesterov=True)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)),
    ("Adam", dict(lr=-0.01)),
    ("Adam", dict(eps=-1e-8)),
    ("Adam", dict(betas=(1.0, 0.999))),
    ("Adam", dict(betas=(0.9, -0.1))),
    ("Adam", dict(weight_decay=-0.1)),
    ("AdamW", dict(lr=-1.5)),
    ("AdamW", dict(betas=(0.9, 1.0))),
    ("Adadelta", dict(lr=-1.0)),
    ("Adadelta", dict(rho=1.5)),
    ("Adadelta", dict(eps=-1e-6)),
    ("Adadelta", dict(weight_decay=-0.1)),
])
def test_bad_arguments_raise_torchs_messages(name, kwargs):
    ours_cls, torch_cls = PAIRS[name]
    expected = _torch_error(lambda: torch_cls([torch.zeros(2, requires_grad=True)], **kwargs))
    with pytest.raises(ValueError) as info:
        ours_cls([nn.Parameter(np.zeros(2))], **kwargs)
    assert str(info.value) == expected


def test_bad_params_raise_torchs_messages():
    p = nn.Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="optimizer got an empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="should be an iterable of Parameters or dicts"):
        optim.SGD(p, lr=0.1)
    with pytest.raises(TypeError, match="optimizer can only optimize Parameters, but one of the "
                                        "params is ndarray"):
        optim.SGD([np.zeros(2)], lr=0.1)
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter "
                                         "group"):
        optim.SGD([{"params": [p]}, {"params": [p]}], lr=0.1)
    with pytest.raises(TypeError, match="ordered collections"):
        optim.SGD([{"params": {p}}], lr=0.1)
