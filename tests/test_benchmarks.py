"""Smoke tests of the benchmark harness on tiny settings: it runs, counts right, refuses wrong
numbers. Nothing here asserts a speed."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import scratchnet as sn
from benchmarks import (flops, isolated, ops, parity, readme_tables, report, time_to_accuracy,
                        timing, training_step, workload)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def keep_backend():
    """Sides switch the global backend and OpenBLAS threads; put both back afterwards."""
    with sn.use_backend(sn.get_backend()):
        yield
    from benchmarks import machine

    machine.set_blas_threads(1)


@pytest.mark.parametrize("name", workload.model_names())
def test_flop_count_matches_torch_flop_counter(name):
    ours = flops.count(name)
    twin = workload.torch_model(name, workload.initial_state(name, 0))
    x = torch.zeros((2,) + tuple(twin.input_shape))
    with FlopCounterMode(display=False) as fwd:
        with torch.no_grad():
            twin(x)
    with FlopCounterMode(display=False) as train:
        twin(x).sum().backward()
    assert ours["forward"] == fwd.get_total_flops() / 2
    assert ours["training"] == train.get_total_flops() / 2


def test_interleaved_rounds_run_every_contender_each_round():
    calls = {"a": [], "b": []}
    contenders = [timing.Contender(k, calls[k].append) for k in calls]
    for c in contenders:
        timing.calibrate(c, target_s=0.0, warmup=1, min_steps=3)
    timing.interleave(contenders, rounds=4)
    for c in contenders:
        assert c.steps == 3 and len(c.times) == 4
        s = timing.summary(c.times, items_per_round=c.steps * 10)
        assert s["min"] <= s["median"] <= s["max"] and s["rounds"] == 4
    ratios = training_step.ratios({c.name: timing.summary(c.times, 30) for c in contenders},
                                  baseline="b")
    assert set(ratios) == {"a"} and ratios["a"]["min"] <= ratios["a"]["max"]


def test_paired_rounds_time_each_contender_alone_with_the_baseline():
    order = []
    contenders = [timing.Contender(k, lambda i, k=k: order.append(k)) for k in ("a", "c")]
    base = timing.Contender("b", lambda i: order.append("b"))
    for c in contenders + [base]:
        timing.calibrate(c, target_s=0.0, warmup=0, min_steps=2)
    order.clear()
    base_times = timing.paired({c.name: [c] for c in contenders}, [base], rounds=3)
    assert [len(c.times) for c in contenders] == [3, 3]
    assert {k: [len(t) for t in v] for k, v in base_times.items()} == {"a": [3], "c": [3]}
    # a's pair runs to the end before c's starts: no third contender inside a pair
    first_c = order.index("c")
    assert "c" not in order[:first_c] and "a" not in order[first_c:]
    assert set(order[:first_c]) == {"a", "b"}


def test_per_op_case_times_each_backend_against_torch():
    timings, speedups = ops.run_case("relu", {"x": (4, 3, 5, 5)}, ["numba", "numpy", "torch"],
                                     threads=1, rounds=2, round_seconds=0.001)
    assert set(timings) == {"numba", "numpy", "torch"} and set(speedups) == {"numba", "numpy"}
    for impl in timings:
        assert timings[impl]["forward"]["median_ms"] > 0 < timings[impl]["backward"]["median_ms"]
    for impl, r in speedups.items():  # torch's time of that backend's own pairing
        assert r["forward"] > 0 and r["backward"] > 0


def test_guard_passes_matching_backends_and_refuses_a_wrong_one(monkeypatch):
    xs, ys = workload.mnist_batches("mlp", 32, 1)
    state = workload.initial_state("mlp", 0)
    for backend in sn.backend.BACKENDS:
        check = parity.check("mlp", backend, state, xs[0], ys[0], threads=1)
        assert check["ok"], check

    real = parity._torch_reference

    def off_by_one_percent(*args):
        loss, grads = real(*args)
        return loss * 1.01, grads

    monkeypatch.setattr(parity, "_torch_reference", off_by_one_percent)
    result = training_step.run("mlp", ["scratchnet-numpy", "torch-cpu"], threads=1, rounds=1,
                               round_seconds=0.001)
    assert "scratchnet-numpy" in result["refused"]
    assert "scratchnet-numpy" not in result["train"] and "torch-cpu" in result["train"]


def test_report_says_which_inputs_hold_zeros():
    """mlp128 and mlp read pixels in [0, 1] (~19 % nonzero); the report's note says so."""
    res = {"models": {}}
    for name in ("mlp128", "mlp"):
        res["models"][name] = training_step.run(name, ["scratchnet-numba", "torch-cpu"],
                                                threads=1, rounds=1, round_seconds=0.001)
        assert 0.15 < res["models"][name]["input_nonzero"]["infer"] < 0.25
    note = report._input_note(res)
    assert "mlp128 19 %, mlp 19 %" in note
    res["models"]["mlp"]["input_nonzero"]["infer"] = 1.0
    res["models"]["mlp128"]["input_nonzero"]["infer"] = 1.0
    assert report._input_note(res) is None


def test_time_to_accuracy_trains_both_frameworks_alike(monkeypatch):
    real = sn.data.load_mnist

    def small(split):  # 10 training steps of 64 and 200 test images
        images, labels = real(split)
        n = 640 if split == "train" else 200
        return images[:n], labels[:n]

    monkeypatch.setattr(sn.data, "load_mnist", small)
    res = time_to_accuracy.run(["scratchnet-numba", "torch-cpu"], threads=1)
    ours, theirs = res["scratchnet-numba"], res["torch-cpu"]
    assert ours["steps"] == theirs["steps"] == 10
    assert theirs["test_accuracy"] > 0.3  # it learned something in 10 steps
    assert abs(ours["test_accuracy"] - theirs["test_accuracy"]) <= 0.05


def test_memory_child_reports_peak_rss(tmp_path):
    res = isolated.peak_memory("mlp", ["scratchnet-numpy"], threads=1, steps=2,
                               cache_dir=str(tmp_path))
    for side, r in res.items():
        assert "error" not in r, r
        assert r["peak_rss_mb"] > 0
    assert res["scratchnet-numpy"]["numpy_traced_peak_mb"] > 0


def test_cli_quick_run_writes_every_output(tmp_path):
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--models", "mlp", "--threads", "1",
           "--rounds", "1", "--round-seconds", "0.002", "--skip", "jit", "memory",
           "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "## Training step throughput" in proc.stdout
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["machine"]["threads"]["numba"] == res["machine"]["threads"]["torch_intra_op"] == 1
    mlp = res["models"]["mlp"]
    assert not mlp["refused"]
    assert set(mlp["train"]) == set(mlp["infer"]) == {"scratchnet-numba", "scratchnet-numpy",
                                                       "torch-cpu"}
    assert set(mlp["ratios"]["train"]) == {"scratchnet-numba", "scratchnet-numpy"}
    assert {c["op"] for c in res["ops"]} >= {"conv2d", "maxpool2d", "relu", "linear"}
    assert all("error" not in t for c in res["ops"] for t in c["timings"].values())
    assert (tmp_path / "RESULTS.md").read_text() == proc.stdout
    assert proc.stdout.startswith("# scratchnet benchmark results\n\n## Headline")
    assert "![scratchnet/torch throughput per model](ratios.png)" in proc.stdout
    assert (tmp_path / "ratios.png").stat().st_size > 0
    assert np.isfinite(res["gemm_peak"]["gflops"])


REPORT = """# report

## Training step throughput (tutorial batch size)

| model | ratio |
|---|---|
| lenet | 2.00× |

## Time to accuracy (one epoch)

prose first, so no table is copied from here

| side | s |
"""


def test_readme_tables_replace_only_the_marked_table():
    readme = ("# title\n\n<!-- results: Training step throughput (tutorial batch size) -->\n\n"
              "| model | ratio |\n|---|---|\n| lenet | 1.00× |\n| mlp | 9× |\n\ntext after\n")
    new = readme_tables.sync(readme, REPORT)
    assert new == readme.replace("| lenet | 1.00× |\n| mlp | 9× |", "| lenet | 2.00× |")
    assert readme_tables.sync(new, REPORT) == new
    with pytest.raises(KeyError):
        readme_tables.sync(readme.replace("Training step", "Training"), REPORT)


def test_readme_shows_the_latest_results_tables():
    """The README's embedded tables are those of benchmarks/RESULTS.md (run
    ``python -m benchmarks.readme_tables`` after a published benchmark run)."""
    with open(readme_tables.README, encoding="utf-8") as f:
        readme = f.read()
    with open(readme_tables.RESULTS, encoding="utf-8") as f:
        results_md = f.read()
    assert readme.count("<!-- results: ") >= 1
    assert readme_tables.sync(readme, results_md) == readme


def test_published_report_is_rendered_from_the_published_json():
    """benchmarks/RESULTS.md is what ``python -m benchmarks.report`` makes of results.json."""
    with open(report.PUBLISHED_REPORT, encoding="utf-8") as f:
        assert f.read() == report.published_markdown()


def test_ad_hoc_runs_do_not_write_the_published_results(tmp_path):
    from benchmarks.__main__ import parse_args

    quick = parse_args(["--quick"])
    assert not quick.publish and os.path.realpath(quick.out) != os.path.realpath(report.PUBLISHED)
    assert parse_args([]).out == parse_args(["--out", "benchmark-results"]).out
    published = parse_args(["--publish"])
    assert published.publish and published.out == report.PUBLISHED
    assert parse_args(["--out", os.path.join(report.BENCHMARKS, "results", "")]).publish
    assert not parse_args(["--out", str(tmp_path)]).publish
    with pytest.raises(SystemExit):
        parse_args(["--quick", "--publish"])
    with pytest.raises(SystemExit):
        parse_args(["--quick", "--out", report.PUBLISHED])
