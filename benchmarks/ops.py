"""Forward and backward time of each op at the shapes the tutorial models run it at.

Each case calls the backend op pair directly (``backend.ops(name).conv2d_forward`` ...) and
torch's functional twin. torch's forward runs with autograd recording, as in training; its
backward is ``torch.autograd.grad`` on a kept graph, so both sides time exactly one
backward pass of one op, gradients for every input included.
"""
import numpy as np
import torch
import torch.nn.functional as F

import scratchnet as sn
from scratchnet import backend

from . import machine, timing

# (op, where the models use it, shapes); batch = the model's tutorial batch size
CASES = [
    ("conv2d", "digitcnn conv1 1→32 3×3 on 28×28, batch 64",
     {"x": (64, 1, 28, 28), "w": (32, 1, 3, 3), "pad": 0}),
    ("conv2d", "digitcnn conv2 32→64 3×3 on 13×13, batch 64",
     {"x": (64, 32, 13, 13), "w": (64, 32, 3, 3), "pad": 0}),
    ("conv2d", "lenet conv2 10→20 5×5 on 12×12, batch 50",
     {"x": (50, 10, 12, 12), "w": (20, 10, 5, 5), "pad": 0}),
    ("conv2d", "widecnn conv2 150→64 5×5 pad 2 on 14×14, batch 50",
     {"x": (50, 150, 14, 14), "w": (64, 150, 5, 5), "pad": 2}),
    ("maxpool2d", "digitcnn pool1 2×2 on 32×26×26, batch 64", {"x": (64, 32, 26, 26)}),
    ("maxpool2d", "digitcnn pool2 2×2 on 64×11×11, batch 64", {"x": (64, 64, 11, 11)}),
    ("relu", "digitcnn relu after conv1, 32×26×26, batch 64", {"x": (64, 32, 26, 26)}),
    ("linear", "digitcnn fc1 1600→64, batch 64", {"x": (64, 1600), "w": (64, 1600)}),
    ("linear", "widecnn fc1 3136→1024, batch 50", {"x": (50, 3136), "w": (1024, 3136)}),
    # the inference batch of mlp128's first layer on its tutorial's input (81 % exact zeros),
    # then on normalised pixels (no zeros)
    ("linear", "mlp128 fc1 784→128, batch 1000, MNIST pixels in [0, 1]",
     {"x": (1000, 784), "w": (128, 784), "input": "mnist"}),
    ("linear", "mlp128 fc1 784→128, batch 1000, MNIST normalised (no zeros)",
     {"x": (1000, 784), "w": (128, 784), "input": "mnist-normalised"}),
    ("log_softmax", "lenet output, 10 classes, batch 50", {"x": (50, 10)}),
    ("nll_loss", "lenet loss, 10 classes, batch 50", {"x": (50, 10)}),
    ("cross_entropy", "digitcnn loss, 10 classes, batch 64", {"x": (64, 10)}),
]
QUICK_CASES = [1, 4, 6, 7, 13]  # indices into CASES: one of each op kind digitcnn uses


def _mnist_rows(n, normalised):
    """n MNIST test images as (n, 784) float32: pixels / 255, or normalised (mean 0.1307,
    std 0.3081)."""
    images, _ = sn.data.load_mnist("test")
    mean_std = (0.1307, 0.3081) if normalised else (None, None)
    return sn.data.normalize(images[:n], *mean_std, np.float32, input_shape=(784,))


def _arrays(op, shapes, rng):
    if "input" in shapes:
        x = _mnist_rows(shapes["x"][0], shapes["input"] == "mnist-normalised")
    else:
        x = rng.standard_normal(shapes["x"], dtype=np.float32)
    if op == "nll_loss":  # log-probabilities, as a model ending in log_softmax gives
        x = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    arrays = {"x": x}
    if "w" in shapes:
        arrays["w"] = rng.standard_normal(shapes["w"], dtype=np.float32) * np.float32(0.1)
        arrays["b"] = rng.standard_normal(shapes["w"][0], dtype=np.float32)
    if op in ("nll_loss", "cross_entropy"):
        arrays["target"] = rng.integers(0, shapes["x"][1], shapes["x"][0]).astype(np.int64)
    return arrays


def _scratchnet_pair(ops, op, a, dout, pad):
    """(forward(), backward()) closures on backend module ``ops``; backward reuses one cache."""
    x, w, b, t = a["x"], a.get("w"), a.get("b"), a.get("target")
    fwd = {
        "conv2d": lambda: ops.conv2d_forward(x, w, b, (1, 1), (pad,) * 4, (1, 1), 1),
        "maxpool2d": lambda: ops.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0), (1, 1), False),
        "relu": lambda: ops.relu_forward(x),
        "linear": lambda: ops.linear_forward(x, w, b),
        "log_softmax": lambda: ops.log_softmax_forward(x, 1),
        "nll_loss": lambda: ops.nll_loss_forward(x, t, None, -100, "mean"),
        "cross_entropy": lambda: ops.cross_entropy_forward(x, t, None, -100, "mean", 0.0),
    }[op]
    out, cache = fwd()
    dout = np.ones_like(out) if out.ndim == 0 else dout  # a loss: d(loss) = 1
    backward = getattr(ops, f"{op}_backward")
    return fwd, lambda: backward(dout, cache)


def _torch_pair(op, a, dout, pad):
    """(forward(), backward()) closures in torch; backward runs on one retained graph."""
    ts = {k: torch.from_numpy(v).requires_grad_(v.dtype == np.float32) for k, v in a.items()}
    x, w, b, t = ts["x"], ts.get("w"), ts.get("b"), ts.get("target")
    fwd = {
        "conv2d": lambda: F.conv2d(x, w, b, padding=pad),
        "maxpool2d": lambda: F.max_pool2d(x, 2),
        "relu": lambda: F.relu(x),
        "linear": lambda: F.linear(x, w, b),
        "log_softmax": lambda: F.log_softmax(x, 1),
        "nll_loss": lambda: F.nll_loss(x, t),
        "cross_entropy": lambda: F.cross_entropy(x, t),
    }[op]
    out = fwd()
    dout = torch.ones_like(out) if out.ndim == 0 else torch.from_numpy(dout)
    inputs = [v for v in ts.values() if v.requires_grad]
    return fwd, lambda: torch.autograd.grad(out, inputs, dout, retain_graph=True)


def _dout_shape(op, shapes):
    """The op's output shape (its upstream gradient's shape)."""
    x = shapes["x"]
    if op == "conv2d":
        f, _, kh, kw = shapes["w"]
        p = shapes["pad"]
        return (x[0], f, x[2] + 2 * p - kh + 1, x[3] + 2 * p - kw + 1)
    if op == "maxpool2d":
        return (x[0], x[1], x[2] // 2, x[3] // 2)
    if op == "linear":
        return (x[0], shapes["w"][0])
    return x


def _summary_ms(times, steps):
    s = timing.summary(times, steps)
    return {"median_ms": s["median_seconds_per_item"] * 1e3, "min_ms": 1e3 / s["max"],
            "max_ms": 1e3 / s["min"], "calls_per_round": steps}


def run_case(op, shapes, impls, threads, rounds, round_seconds, seed=0):
    """(timings, speed-ups) for one case.

    timings: ``{impl: {"forward": summary, "backward": summary} or {"error": ...}}``;
    speed-ups: ``{impl: {"forward": x, "backward": x}}``, torch's median time over the impl's.
    Each scratchnet backend is timed in its own interleave with torch (see timing.paired);
    torch's reported timings are those of its first pairing.
    """
    rng = np.random.default_rng(seed)
    a = _arrays(op, shapes, rng)
    dout = rng.standard_normal(_dout_shape(op, shapes), dtype=np.float32)
    pad = shapes.get("pad", 0)
    groups, result = {}, {}
    for impl in impls:
        # the numba backend owns the cores through prange; plain numpy only through BLAS
        blas = 1 if impl == "numba" else threads
        enter = (lambda n=blas: machine.set_blas_threads(n)) if impl != "torch" else timing.noop
        try:
            enter()
            if impl == "torch":
                fwd, bwd = _torch_pair(op, a, dout, pad)
            else:
                fwd, bwd = _scratchnet_pair(backend.ops(impl), op, a, dout, pad)
            bwd()
        except Exception as exc:  # a missing op is reported, not fatal
            result[impl] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        groups[impl] = [timing.Contender(f"{impl}/{d}", lambda i, fn=fn: fn(), enter)
                        for d, fn in (("forward", fwd), ("backward", bwd))]
    for group in groups.values():
        for c in group:
            timing.calibrate(c, round_seconds)

    def by_direction(group, times):
        return {c.name.split("/")[1]: _summary_ms(t, c.steps) for c, t in zip(group, times)}

    torch_group = groups.get("torch")
    others = {impl: g for impl, g in groups.items() if impl != "torch"}
    speedups = {}
    if torch_group is None or not others:  # nothing to pair
        for impl, group in groups.items():
            timing.interleave(group, rounds)
            result[impl] = by_direction(group, [c.times for c in group])
    else:
        base_times = timing.paired(others, torch_group, rounds)
        for impl, group in others.items():
            result[impl] = by_direction(group, [c.times for c in group])
            theirs = by_direction(torch_group, base_times[impl])
            result.setdefault("torch", theirs)
            speedups[impl] = {d: theirs[d]["median_ms"] / result[impl][d]["median_ms"]
                              for d in ("forward", "backward")}
    machine.set_blas_threads(1)
    return result, speedups


def run(impls, threads, rounds, round_seconds, quick=False):
    """Every case (or the quick subset): a list of dicts with the op, its context and timings."""
    cases = [CASES[i] for i in QUICK_CASES] if quick else CASES
    out = []
    for op, where, shapes in cases:
        timings, ratios = run_case(op, shapes, impls, threads, rounds, round_seconds)
        out.append({"op": op, "where": where, "shapes": shapes, "timings": timings,
                    "speedup_vs_torch": ratios})
    return out
