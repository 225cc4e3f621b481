"""Measurements that need a fresh process: JIT compile time and peak memory of a training run.

JIT: the first training step of the numba backend in a new process with ``NUMBA_CACHE_DIR``
pointing at an empty directory (cold: every kernel compiles), then again in a second process
with the same, now filled, directory (warm: kernels load from disk). The compile cost is the
first step minus a steady step. The first step starts the compile helper process
(``compile_ahead``) as scratchnet's training loop does, and its time is inside the step's.

Memory: one process per side trains for a few steps. After setup (imports, model, batches)
the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``), so ``peak_rss_mb`` is the
process's peak during training alone. Every child imports the same libraries (torch, numba,
scratchnet), so ``training_growth_mb`` (peak − RSS before the first step) is what training
itself added: activations, gradients, optimizer state and, for the numba backend, the compiled
kernels loaded from the cache. (``ru_maxrss`` is no use here: after ``exec`` it still holds
the parent's peak.) For the scratchnet sides, tracemalloc also reports the peak of
NumPy-allocated memory during training (arrays a Numba kernel allocates itself are invisible
to it). Numba children use the model's warm cache so compilation doesn't inflate the peak.

Run as ``python -m benchmarks.isolated {jit,memory} ...``: the last stdout line is JSON.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = "BENCHMARK_RESULT "


def _run_child(args, env, timeout):
    cmd = [sys.executable, "-m", "benchmarks.isolated", *map(str, args)]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s: {' '.join(cmd)}"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-600:]}"}


class CacheDir:
    """An empty NUMBA_CACHE_DIR for one model, removed on exit."""

    def __enter__(self):
        self.path = tempfile.mkdtemp(prefix="scratchnet-bench-numba-cache-")
        return self.path

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)


def jit_times(model, threads, cache_dir, timeout=600):
    """``{"cold": ..., "warm": ...}``: first-step and steady-step seconds in two fresh processes."""
    env = {"NUMBA_CACHE_DIR": cache_dir}
    args = ["jit", "--model", model, "--threads", threads]
    cold = _run_child(args, env, timeout)
    warm = _run_child(args, env, timeout)
    return {"cold": cold, "warm": warm, "cache": "NUMBA_CACHE_DIR=<fresh temporary directory>"}


def fill_cache(model, threads, cache_dir, timeout=600):
    """Compile ``model``'s kernels into ``cache_dir`` (one cold JIT child, result discarded)."""
    _run_child(["jit", "--model", model, "--threads", threads], {"NUMBA_CACHE_DIR": cache_dir},
               timeout)


def peak_memory(model, sides, threads, steps, cache_dir, timeout=600):
    """``{side: {...}}``: peak RSS (and traced NumPy peak) of ``steps`` training steps per side."""
    env = {"NUMBA_CACHE_DIR": cache_dir}
    return {side: _run_child(["memory", "--model", model, "--side", side, "--threads", threads,
                              "--steps", steps], env, timeout)
            for side in sides}


def _status_mb(field):
    """``VmRSS`` / ``VmHWM`` (MB) from /proc/self/status; None where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss():
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _child_jit(model, threads):
    t0 = time.perf_counter()
    import scratchnet  # noqa: F401
    import scratchnet.data  # noqa: F401
    import scratchnet.models  # noqa: F401
    import_s = time.perf_counter() - t0

    from . import frameworks, machine, workload

    machine.set_threads(threads)
    state = workload.initial_state(model, 0)
    batch = workload.recipe(model).batch_size
    xs, ys = workload.mnist_batches(model, batch, 6)
    side = frameworks.build("scratchnet-numba", model, state, threads)
    side.enter()
    times = []
    for x, y in zip(xs, ys):
        t = time.perf_counter()
        side.train_step(x, y)
        times.append(time.perf_counter() - t)
    steady = statistics.median(times[1:])
    return {"import_s": import_s, "first_step_s": times[0], "steady_step_s": steady,
            "compile_s": times[0] - steady}


def _child_memory(model, side_name, threads, steps):
    import gc
    import resource
    import tracemalloc

    from . import frameworks, machine, workload

    machine.set_threads(threads)
    state = workload.initial_state(model, 0)
    batch = workload.recipe(model).batch_size
    xs, ys = workload.mnist_batches(model, batch, 8)
    side = frameworks.build(side_name, model, state, threads)
    inputs = frameworks.stack_inputs(side, xs, ys)
    side.enter()
    side.sync()
    gc.collect()
    setup_peak = _status_mb("VmHWM")
    reset = _reset_peak_rss()
    before = _status_mb("VmRSS")
    for i in range(steps):
        side.train_step(*inputs[i % len(inputs)])
    side.sync()
    if reset:
        peak = _status_mb("VmHWM")
    else:  # no /proc: the process's lifetime peak, setup included (bytes on macOS, else KiB)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak /= 2 ** 20 if sys.platform == "darwin" else 2 ** 10
    result = {"steps": steps, "batch_size": batch, "setup_peak_rss_mb": setup_peak,
              "rss_before_training_mb": before, "peak_rss_mb": peak,
              "peak_includes_setup": not reset}
    if before is not None and reset:
        result["training_growth_mb"] = peak - before
    if side_name in frameworks.SCRATCHNET:
        tracemalloc.start()
        for i in range(3):
            side.train_step(*inputs[i % len(inputs)])
        result["numpy_traced_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2 ** 20
        tracemalloc.stop()
    if side_name == "torch-cuda":
        import torch

        result["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["jit", "memory"])
    parser.add_argument("--model", required=True)
    parser.add_argument("--side", default="scratchnet-numba")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    if args.what == "jit":
        result = _child_jit(args.model, args.threads)
    else:
        result = _child_memory(args.model, args.side, args.threads, args.steps)
    sys.stdout.write(MARKER + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
