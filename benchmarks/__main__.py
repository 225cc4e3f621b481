"""Benchmark scratchnet (numba and numpy backends) against torch on this machine.

``python -m benchmarks [--quick] [--models ...] [--threads N] [--device cpu|cuda] [--out DIR]``
prints markdown tables and writes results.json, RESULTS.md and ratios.png to --out
(default ./benchmark-results). ``--publish`` runs the full suite and replaces the published
run: benchmarks/results/ (results.json, ratios.png) and benchmarks/RESULTS.md.
"""
import argparse
import os
import sys
import time

from . import frameworks, isolated, machine, ops, report, time_to_accuracy, training_step, workload

PARTS = ("train", "ops", "jit", "memory", "accuracy")
QUICK_MODELS = ["digitcnn", "lenet"]
# ad-hoc runs never overwrite the published one
DEFAULT_OUT = "benchmark-results"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None/False ones (whose help says what --quick or not decides)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0],
                                formatter_class=_HelpFormatter)
    p.add_argument("--models", nargs="+", choices=workload.model_names(), default=None,
                   help=f"models to time (default: all; with --quick: {' '.join(QUICK_MODELS)})")
    p.add_argument("--backends", nargs="+", choices=["numba", "numpy"], default=["numba", "numpy"],
                   help="scratchnet backends to compare with torch")
    p.add_argument("--threads", type=int, default=machine.available_cores(),
                   help="threads for Numba and torch alike (all available cores)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda adds torch on the GPU (skipped with a note when there is none)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7; quick 3)")
    p.add_argument("--round-seconds", type=float, default=None,
                   help="target seconds per round, which fixes steps per round "
                        "(default 0.5; quick 0.1)")
    p.add_argument("--skip", nargs="+", choices=PARTS, default=[],
                   help="parts not to run (train covers training and inference throughput)")
    p.add_argument("--memory-steps", type=int, default=None,
                   help="training steps per memory child (default 20; quick 5)")
    p.add_argument("--accuracy-steps", type=int, default=None,
                   help="cap the time-to-accuracy run at this many steps (default: one epoch)")
    p.add_argument("--quick", action="store_true",
                   help="fewer models, rounds and op cases; no time-to-accuracy run unless "
                        "--accuracy-steps is given")
    p.add_argument("--seed", type=int, default=0, help="initial weights and batch order")
    p.add_argument("--out", default=None,
                   help=f"directory for results.json, RESULTS.md and ratios.png (default: "
                        f"{DEFAULT_OUT}; with --publish: the published run)")
    p.add_argument("--publish", action="store_true",
                   help="replace the published run (benchmarks/results/ and "
                        "benchmarks/RESULTS.md); not with --quick")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    if args.out is None:
        args.out = report.PUBLISHED if args.publish else DEFAULT_OUT
    args.publish = args.publish or _same_folder(args.out, report.PUBLISHED)
    if args.publish and args.quick:
        p.error("a quick run is not published: drop --quick, or write elsewhere with --out DIR")
    args.models = args.models or (QUICK_MODELS if args.quick else workload.model_names())
    args.rounds = args.rounds or (3 if args.quick else 7)
    args.round_seconds = args.round_seconds or (0.1 if args.quick else 0.5)
    args.memory_steps = args.memory_steps or (5 if args.quick else 20)
    if args.quick and args.accuracy_steps is None:
        args.skip = sorted(set(args.skip) | {"accuracy"})
    return args


def _same_folder(a, b):
    return os.path.realpath(a) == os.path.realpath(b)


def log(msg):
    sys.stderr.write(f"[benchmarks {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def _subprocess_parts(args, sides, results):
    numba = "scratchnet-numba" in sides
    for name in args.models:
        entry = results["models"].setdefault(name, {})
        with isolated.CacheDir() as cache:
            # the cold JIT child also fills the cache the memory children then load from
            if numba and "jit" not in args.skip:
                log(f"{name}: JIT compile time, cold then warm Numba cache (fresh processes)")
                entry["jit"] = isolated.jit_times(name, args.threads, cache)
            elif numba:
                isolated.fill_cache(name, args.threads, cache)
            if "memory" not in args.skip:
                log(f"{name}: peak memory, one process per side")
                entry["memory"] = isolated.peak_memory(name, sides, args.threads,
                                                       args.memory_steps, cache)


def main(argv=None):
    args = parse_args(argv)
    thread_info = machine.set_threads(args.threads)
    sides = [f"scratchnet-{b}" for b in args.backends] + ["torch-cpu"]
    notes = []
    load = machine.load_average()
    if load is not None and load >= 0.5:
        notes.append(f"1-minute load average was {load:.2f} at the start on "
                     f"{machine.available_cores()} cores: other processes were competing for "
                     f"the CPU, so absolute figures (and, less so, ratios) are unreliable")
    if args.device == "cuda":
        note = frameworks.cuda_note()
        if note:
            notes.append(note)
        else:
            sides.append("torch-cuda")
    results = {"settings": {"command": "python -m benchmarks " + " ".join(argv or sys.argv[1:]),
                            "models": args.models, "sides": sides, "threads": args.threads,
                            "device": args.device, "rounds": args.rounds,
                            "round_seconds": args.round_seconds, "quick": args.quick,
                            "skipped": args.skip, "seed": args.seed,
                            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                            "load_average_1min_at_start": load},
               "notes": notes, "models": {}}

    log(f"float32 GEMM peak, {args.threads} threads")
    results["gemm_peak"] = machine.gemm_peak(args.threads, reps=3 if args.quick else 5)
    if "train" not in args.skip:
        for name in args.models:
            log(f"{name}: correctness guard, then training and inference throughput")
            results["models"][name] = training_step.run(name, sides, args.threads, args.rounds,
                                                        args.round_seconds, args.seed)
            for side, reason in results["models"][name]["refused"].items():
                notes.append(f"{name}: {side} speed not reported, it disagrees with torch: "
                             f"{reason}")
    if "ops" not in args.skip:
        log("per-op forward and backward timings")
        results["ops"] = ops.run(args.backends + ["torch"], args.threads, args.rounds,
                                 args.round_seconds / 2, quick=args.quick)
    if not {"jit", "memory"} <= set(args.skip):
        _subprocess_parts(args, sides, results)
    if "accuracy" not in args.skip:
        log("time to accuracy: one epoch of digitcnn per side")
        results["time_to_accuracy"] = {
            "description": time_to_accuracy.describe(args.accuracy_steps),
            "sides": time_to_accuracy.run(sides, args.threads, args.seed, args.accuracy_steps)}
    machine.set_blas_threads(1)
    results["machine"] = machine.facts(thread_info)
    if args.publish:
        text, paths = report.write(results, args.out, report_path=report.PUBLISHED_REPORT,
                                   accuracy_dir=os.path.join(report.PUBLISHED, "accuracy"))
    else:
        text, paths = report.write(results, args.out)
    sys.stdout.write(text)
    log("wrote " + ", ".join(paths.values()))
    return results


if __name__ == "__main__":
    main()
