"""Training-step throughput at the tutorial batch size and inference throughput at batch 1000.

For one model: build every side from the same weights, refuse any scratchnet backend whose
first-batch loss or gradients disagree with torch, calibrate each side's steps per round,
then time each side in interleaved rounds paired with torch alone (timing.paired). Ratios are
taken round by round (scratchnet's round r over torch's round r, both run back to back) and
their median reported, which cancels most of the machine's drift.
"""
import statistics

import numpy as np

from . import flops, frameworks, parity, timing, workload

N_BATCHES = 16  # distinct batches cycled through; enough that no single batch's quirks matter


def _contenders(sides, inputs, work):
    """A Contender per side whose step runs ``work(side, *batch)`` on batch i (cycled)."""
    return [timing.Contender(s.name, lambda i, s=s, b=b: work(s, *b[i % len(b)]), s.enter, s.sync)
            for s, b in zip(sides, inputs)]


def _time(sides, inputs, work, items_per_step, rounds, round_seconds, baseline="torch-cpu"):
    """(results, ratios): each side's throughput summary and its ratio to ``baseline``.

    Every other side is timed in its own interleave with the baseline (timing.paired). The
    baseline's figures reported are those of its pairing with the first side (the default
    backend); each ratio comes from its own pairing.
    """
    contenders = _contenders(sides, inputs, work)
    for c in contenders:
        timing.calibrate(c, round_seconds)

    def summary(c, times):
        return dict(timing.summary(times, c.steps * items_per_step), steps=c.steps)

    base = next((c for c in contenders if c.name == baseline), None)
    others = [c for c in contenders if c is not base]
    if base is None or not others:
        timing.interleave(contenders, rounds)
        results = {c.name: summary(c, c.times) for c in contenders}
        return results, ratios(results, baseline)
    base_times = timing.paired({c.name: [c] for c in others}, [base], rounds)
    results, found = {}, {}
    for c in others:
        pair = {c.name: summary(c, c.times), baseline: summary(base, base_times[c.name][0])}
        results.setdefault(baseline, pair[baseline])
        results[c.name] = pair[c.name]
        found[c.name] = ratios(pair, baseline)[c.name]
    return results, found


def ratios(results, baseline="torch-cpu"):
    """Median over rounds of (side's throughput / baseline's throughput in the same round)."""
    if baseline not in results:
        return {}
    base = results[baseline]
    out = {}
    for name, res in results.items():
        if name == baseline:
            continue
        per_round = sorted(
            (res["items_per_round"] / t) / (base["items_per_round"] / tb)
            for t, tb in zip(res["round_seconds"], base["round_seconds"]))
        out[name] = {"median": statistics.median(per_round), "min": per_round[0],
                     "max": per_round[-1]}
    return out


def run(model_name, side_names, threads, rounds, round_seconds, seed=0):
    """Every figure for one model: parity, train/infer throughput, ratios, GFLOP/s."""
    recipe = workload.recipe(model_name)
    batch = recipe.batch_size
    state = workload.initial_state(model_name, seed)
    xs, ys = workload.mnist_batches(model_name, batch, N_BATCHES, "train", seed)
    result = {"batch_size": batch, "inference_batch": workload.INFERENCE_BATCH,
              "recipe": recipe.describe(), "flops_per_sample": flops.count(model_name),
              "parity": {}, "refused": {}}

    kept = []
    for name in side_names:
        if name in frameworks.SCRATCHNET:
            check = parity.check(model_name, frameworks.SCRATCHNET[name], state, xs[0], ys[0],
                                 threads)
            result["parity"][name] = check
            if not check["ok"]:
                result["refused"][name] = check["reason"]
                continue
        kept.append(name)

    sides = [frameworks.build(name, model_name, state, threads) for name in kept]
    inputs = [frameworks.stack_inputs(s, xs, ys) for s in sides]
    result["train"], train_ratios = _time(sides, inputs, lambda s, x, y: s.train_step(x, y),
                                          batch, rounds, round_seconds)

    xi, yi = workload.mnist_batches(model_name, workload.INFERENCE_BATCH, 2, "test", seed)
    # pixels in [0, 1] leave MNIST's background exactly 0, which scratchnet may skip (report)
    result["input_nonzero"] = {"train": np.count_nonzero(xs) / xs.size,
                               "infer": np.count_nonzero(xi) / xi.size}
    for s in sides:
        s.train(False)
    inputs = [frameworks.stack_inputs(s, xi, yi) for s in sides]
    result["infer"], infer_ratios = _time(sides, inputs, lambda s, x, y: s.infer(x),
                                          workload.INFERENCE_BATCH, rounds, round_seconds)

    result["ratios"] = {"train": train_ratios, "infer": infer_ratios}
    f = result["flops_per_sample"]
    result["gflops"] = {
        part: {name: res["median"] * f[kind] / 1e9 for name, res in result[part].items()}
        for part, kind in (("train", "training"), ("infer", "forward"))}
    return result
