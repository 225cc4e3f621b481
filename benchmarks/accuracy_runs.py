"""Full training runs of every recipe: test accuracy, wall time and samples/s, for the README.

    python -m benchmarks.accuracy_runs                       # every recipe, in full (hours)
    python -m benchmarks.accuracy_runs --models digitcnn lenet
    python -m benchmarks.accuracy_runs --limit-train 2000 --limit-test 500 --epochs 1   # a check

Each model is trained by ``scratchnet train`` exactly as a user would run it (its recipe, the
shipped MNIST, the full test set; for the two-digit models multimlp and multicnn, the
tutorial's 40,000 + 4,000 two-digit images generated from MNIST with the seed), after an
untimed ``--dry-run`` that compiles and caches the Numba kernels, so JIT time is not in the
numbers. Writes ``accuracy.json`` and ``accuracy.md`` (a markdown table) plus each run's
folder to --out (default ./benchmark-results/accuracy); ``--publish`` writes them to
benchmarks/results/accuracy instead and re-renders benchmarks/RESULTS.md with the table.
"""
import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time

from scratchnet import cli, recipes

from . import machine, report

# ad-hoc runs never overwrite the published tables
DEFAULT_OUT = os.path.join("benchmark-results", "accuracy")
PUBLISHED_OUT = os.path.join(report.PUBLISHED, "accuracy")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.accuracy_runs",
                                description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", choices=list(recipes.RECIPES),
                   default=list(recipes.RECIPES), help="recipes to run")
    p.add_argument("--out", default=None,
                   help=f"folder for the table and the runs (default: {DEFAULT_OUT}; with "
                        f"--publish: benchmarks/results/accuracy)")
    p.add_argument("--publish", action="store_true",
                   help="write the published tables and re-render benchmarks/RESULTS.md")
    p.add_argument("--backend", choices=["numba", "numpy"], default="numba")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--epochs", type=int, default=None,
                   help="override every recipe's epochs (for a quick check; default: the recipe's)")
    p.add_argument("--limit-train", type=int, default=None,
                   help="train on the first N images only (a quick check; default: all)")
    p.add_argument("--limit-test", type=int, default=None,
                   help="test on the first N images only (a quick check; default: all 10,000, "
                        "or the 4,000 two-digit ones)")
    p.add_argument("--progress", action="store_true", help="show the progress bars")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = PUBLISHED_OUT if args.publish else DEFAULT_OUT
    return args


def train_argv(model, args, out):
    argv = ["train", "--model", model, "--out", out, "--backend", args.backend,
            "--seed", str(args.seed)]
    for flag, value in (("--epochs", args.epochs), ("--limit-train", args.limit_train),
                        ("--limit-test", args.limit_test)):
        if value is not None:
            argv += [flag, str(value)]
    return argv if args.progress else argv + ["--no-progress"]


def warm_up(model, args):
    """An untimed dry run: compiles (or loads from cache) every kernel the model uses."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["train", "--model", model, "--dry-run", "--no-progress",
                         "--backend", args.backend, "--out", os.path.join(tmp, "run")])
    if code != 0:
        raise SystemExit(f"accuracy_runs: the warm-up dry run of {model} failed (exit {code})")


def run_one(model, args):
    """Train ``model`` by its recipe; the row of the results table."""
    out = os.path.join(args.out, model)
    if os.path.exists(os.path.join(out, cli.CHECKPOINT)):
        raise SystemExit(f"accuracy_runs: {out} already holds a run; remove it or pass --out")
    warm_up(model, args)
    start = time.perf_counter()
    code = cli.main(train_argv(model, args, out))
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"accuracy_runs: training {model} failed (exit {code})")
    with open(os.path.join(out, cli.METRICS)) as f:
        metrics = json.load(f)
    epochs = metrics["epochs"]
    train_seconds = sum(e["seconds"] for e in epochs)
    samples = sum(e["samples_per_s"] * e["seconds"] for e in epochs)
    return {"model": model, "recipe": recipes.Recipe(**{
                k: metrics["config"][k] for k in recipes.Recipe.__dataclass_fields__}).describe(),
            "epochs": len(epochs), "test_accuracy": metrics["test_accuracy"],
            "test_samples": metrics["test_samples"],
            "final_train_accuracy": epochs[-1]["train_accuracy"],
            "final_val_accuracy": epochs[-1]["val_accuracy"],
            # two-digit models: each digit's test accuracy and both digits right
            **{k: metrics[k] for k in ("test_accuracy_first", "test_accuracy_second",
                                       "test_accuracy_both") if k in metrics},
            "wall_seconds": wall, "train_seconds": train_seconds,
            "samples_per_s": samples / train_seconds if train_seconds else None,
            "run_folder": out}


def environment(args):
    import numba
    import numpy as np
    return {"cpu": machine.cpu_model(), "cores_available": machine.available_cores(),
            "numba_threads": numba.get_num_threads(), "python": sys.version.split()[0],
            "numpy": np.__version__, "numba": numba.__version__, "backend": args.backend,
            "seed": args.seed, "date": time.strftime("%Y-%m-%d"),
            "load_average_1min_at_end": machine.load_average()}


def _test_sets(rows):
    """ "10000 MNIST test images", and the two-digit models' own test set when they ran."""
    sets = []
    for two_digit, what in ((False, "MNIST test images"),
                            (True, "two-digit test images (multimlp, multicnn)")):
        counts = sorted({r["test_samples"] for r in rows
                         if ("test_accuracy_both" in r) == two_digit})
        if counts:
            sets.append(f"{'/'.join(map(str, counts))} {what}")
    return " and ".join(sets) or "no test images"


def markdown(rows, env, args):
    lines = ["| model | recipe | epochs | test accuracy | wall time | training samples/s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        accuracy = f"{100 * r['test_accuracy']:.2f}%"
        if "test_accuracy_both" in r:
            accuracy = (f"first {100 * r['test_accuracy_first']:.2f}%, second "
                        f"{100 * r['test_accuracy_second']:.2f}%, both "
                        f"{100 * r['test_accuracy_both']:.2f}%")
        lines.append(f"| {r['model']} | {r['recipe']} | {r['epochs']} | "
                     f"{accuracy} | {r['wall_seconds'] / 60:.1f} min | "
                     f"{r['samples_per_s']:,.0f} |")
    limits = [f"{name} {value}" for name, value in (("--epochs", args.epochs),
              ("--limit-train", args.limit_train), ("--limit-test", args.limit_test)) if value]
    lines += ["", f"`scratchnet train --model NAME` ({env['backend']} backend, seed "
              f"{env['seed']}{', ' + ', '.join(limits) if limits else ''}) on {env['cpu']}, "
              f"{env['cores_available']} cores, {env['numba_threads']} Numba threads; Python "
              f"{env['python']}, NumPy {env['numpy']}, Numba {env['numba']}; {env['date']}. "
              f"Test accuracy on {_test_sets(rows)}. "
              f"Wall time: the whole command (data loading, training, validation, test, plots) "
              f"after an untimed dry run that compiled the kernels; samples/s: training steps "
              f"only."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for model in args.models:
        print(f"== {model}", flush=True)
        rows.append(run_one(model, args))
    env = environment(args)
    with open(os.path.join(args.out, "accuracy.json"), "w") as f:
        json.dump({"environment": env, "runs": rows}, f, indent=2)
    table = markdown(rows, env, args)
    with open(os.path.join(args.out, "accuracy.md"), "w") as f:
        f.write(table)
    print(table)
    if args.publish:
        print(f"wrote {report.render_published()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
