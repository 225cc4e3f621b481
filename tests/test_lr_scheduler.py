"""Learning-rate schedulers against torch.optim.lr_scheduler: lrs, state dicts, resuming.

Both schedulers drive an SGD over the same two param groups; the lrs are Python floats made by
the same formulas in the same order, so they must agree exactly.
"""
import json
import warnings

import numpy as np
import pytest
import torch

from scratchnet import nn, optim
from scratchnet.optim import lr_scheduler

EPOCHS = 60

CASES = [
    ("StepLR", dict(step_size=1, gamma=0.7)),
    ("StepLR", dict(step_size=7)),
    ("MultiStepLR", dict(milestones=[3, 10, 10, 41], gamma=0.5)),
    ("MultiStepLR", dict(milestones=(25,))),
    ("ExponentialLR", dict(gamma=0.93)),
    ("CosineAnnealingLR", dict(T_max=20)),
    ("CosineAnnealingLR", dict(T_max=17, eta_min=0.002)),
]
PLATEAU_CASES = [
    dict(),
    dict(patience=2, factor=0.5),
    dict(mode="max", patience=1, threshold=0.05, cooldown=2),
    dict(threshold_mode="abs", threshold=0.01, patience=0, min_lr=[0.004, 0.0]),
    dict(mode="max", threshold_mode="abs", patience=3, factor=0.2, min_lr=1e-3, eps=1e-4),
]


def _case_id(case):
    name, kwargs = case if isinstance(case, tuple) else ("ReduceLROnPlateau", case)
    return name + "-" + ("-".join(f"{k}={v}" for k, v in kwargs.items()) or "defaults")


def _optimizers(lr=0.1):
    """Our SGD and torch's, each with two groups (the second at a third of the lr)."""
    ours = optim.SGD([{"params": [nn.Parameter(np.zeros(2))]},
                      {"params": [nn.Parameter(np.zeros(3))], "lr": lr / 3}], lr=lr)
    theirs = torch.optim.SGD([{"params": [torch.zeros(2, requires_grad=True)]},
                              {"params": [torch.zeros(3, requires_grad=True)], "lr": lr / 3}],
                             lr=lr)
    return ours, theirs


def _schedulers(name, kwargs):
    ours, theirs = _optimizers()
    return (getattr(lr_scheduler, name)(ours, **kwargs),
            getattr(torch.optim.lr_scheduler, name)(theirs, **kwargs))


def _step_both(ours, theirs):
    # the optimizers take a step first, as torch asks (no warning from torch's scheduler)
    ours.optimizer.step()
    theirs.optimizer.step()
    ours.step()
    theirs.step()


def _assert_same_lrs(ours, theirs, epoch):
    assert ours.get_last_lr() == theirs.get_last_lr(), f"epoch {epoch}"
    assert [g["lr"] for g in ours.optimizer.param_groups] == \
        [g["lr"] for g in theirs.optimizer.param_groups], f"epoch {epoch}"
    assert ours.last_epoch == theirs.last_epoch


def _metric(epoch):
    """A bumpy metric that falls in steps, then stalls after epoch 20."""
    return float(np.round(1.0 / (1 + min(epoch, 20) // 4) + 0.02 * np.sin(epoch), 3))


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_schedule_matches_torch(case):
    ours, theirs = _schedulers(*case)
    _assert_same_lrs(ours, theirs, 0)
    for epoch in range(1, EPOCHS + 1):
        _step_both(ours, theirs)
        _assert_same_lrs(ours, theirs, epoch)
    # the schedule really moved the lrs (a scheduler stuck at the initial lr fails here)
    assert ours.get_last_lr() != ours.base_lrs


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_state_dict_has_torchs_keys_and_values(case):
    ours, theirs = _schedulers(*case)
    for _ in range(5):
        _step_both(ours, theirs)
    sd, tsd = ours.state_dict(), theirs.state_dict()
    assert list(sd) == list(tsd)
    for key, value in tsd.items():
        assert sd[key] == value, key


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_json_round_trip_mid_schedule_resumes_exactly(case):
    """Save optimizer and scheduler at epoch 25 through JSON, restore fresh ones, go on."""
    name, kwargs = case
    ours, theirs = _schedulers(name, kwargs)
    for _ in range(25):
        _step_both(ours, theirs)
    saved = json.loads(json.dumps(ours.state_dict()))
    opt_groups = ours.optimizer.state_dict()["param_groups"]

    fresh_opt, _ = _optimizers()
    fresh = getattr(lr_scheduler, name)(fresh_opt, **kwargs)
    fresh_opt.load_state_dict({"state": {}, "param_groups": opt_groups})
    fresh.load_state_dict(saved)
    _assert_same_lrs(fresh, theirs, 25)
    for epoch in range(26, EPOCHS + 1):
        _step_both(fresh, theirs)
        _assert_same_lrs(fresh, theirs, epoch)


@pytest.mark.parametrize("case", CASES[::2], ids=_case_id)
def test_torchs_state_dict_loads(case):
    name, kwargs = case
    ours, theirs = _schedulers(name, kwargs)
    for _ in range(9):
        _step_both(ours, theirs)
    fresh_opt, _ = _optimizers()
    fresh = getattr(lr_scheduler, name)(fresh_opt, **kwargs)
    for group, tgroup in zip(fresh_opt.param_groups, theirs.optimizer.param_groups):
        group["lr"], group["initial_lr"] = tgroup["lr"], tgroup["initial_lr"]
    fresh.load_state_dict(theirs.state_dict())
    for epoch in range(10, 30):
        _step_both(fresh, theirs)
        _assert_same_lrs(fresh, theirs, epoch)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_step_with_epoch_uses_the_closed_form(case):
    ours, theirs = _schedulers(*case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates step(epoch)
        for epoch in (4, 11, 3, 30):
            ours.step(epoch)
            theirs.step(epoch)
            _assert_same_lrs(ours, theirs, epoch)


@pytest.mark.parametrize("kwargs", PLATEAU_CASES, ids=_case_id)
def test_reduce_on_plateau_matches_torch(kwargs):
    ours, theirs = _schedulers("ReduceLROnPlateau", kwargs)
    for epoch in range(1, EPOCHS + 1):
        ours.step(_metric(epoch))
        theirs.step(_metric(epoch))
        _assert_same_lrs(ours, theirs, epoch)
        assert ours.num_bad_epochs == theirs.num_bad_epochs
        assert ours.best == theirs.best
        if epoch == 30:  # resume from a JSON copy half-way
            saved = json.loads(json.dumps(ours.state_dict()))
            assert list(saved) == list(theirs.state_dict())
            fresh_opt, _ = _optimizers()
            for group, g in zip(fresh_opt.param_groups, ours.optimizer.param_groups):
                group["lr"] = g["lr"]
            ours = lr_scheduler.ReduceLROnPlateau(fresh_opt, **kwargs)
            ours.load_state_dict(saved)
    assert ours.get_last_lr() != [0.1, 0.1 / 3]  # the metric stalls: the lr must have dropped


def test_resuming_with_last_epoch_needs_initial_lr():
    opt, topt = _optimizers()
    with pytest.raises(KeyError, match="initial_lr"):
        lr_scheduler.StepLR(opt, 3, last_epoch=4)
    with pytest.raises(KeyError, match="initial_lr"):
        torch.optim.lr_scheduler.StepLR(topt, 3, last_epoch=4)


def test_bad_arguments():
    opt, _ = _optimizers()
    with pytest.raises(TypeError, match="is not an Optimizer"):
        lr_scheduler.StepLR(object(), 3)
    with pytest.raises(ValueError, match="Factor should be < 1.0"):
        lr_scheduler.ReduceLROnPlateau(opt, factor=1.0)
    with pytest.raises(ValueError, match="expected 2 min_lrs, got 3"):
        lr_scheduler.ReduceLROnPlateau(opt, min_lr=[0, 0, 0])
    with pytest.raises(ValueError, match="mode 'median' is unknown"):
        lr_scheduler.ReduceLROnPlateau(opt, mode="median")
    with pytest.raises(ValueError, match="threshold mode 'log' is unknown"):
        lr_scheduler.ReduceLROnPlateau(opt, threshold_mode="log")


def test_adadelta_with_steplr_follows_torch():
    """The examplenet recipe's pair (Adadelta, StepLR per epoch) on a small problem."""
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((4, 3))
    p, t = nn.Parameter(w0.copy()), torch.tensor(w0.copy(), requires_grad=True)
    opt, topt = optim.Adadelta([p], lr=1.0), torch.optim.Adadelta([t], lr=1.0, foreach=False)
    sched = lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    tsched = torch.optim.lr_scheduler.StepLR(topt, step_size=1, gamma=0.7)
    for _ in range(6):
        for _ in range(10):
            g = rng.standard_normal((4, 3))
            p.grad, t.grad = g.copy(), torch.tensor(g)
            opt.step()
            topt.step()
        sched.step()
        tsched.step()
    assert sched.get_last_lr() == tsched.get_last_lr()
    np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=0)
