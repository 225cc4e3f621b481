"""The ``scratchnet`` command: train, evaluate, predict, export, serve.

    scratchnet train --model digitcnn                  # the tutorial's recipe; flags override it
    scratchnet train --resume runs/digitcnn-...        # continue a run, bitwise as if never stopped
    scratchnet evaluate runs/digitcnn-.../checkpoint.npz   # or a PyTorch state dict (.pt/.pth)
    scratchnet predict runs/digitcnn-.../checkpoint.npz my_digit.png
    scratchnet export runs/digitcnn-.../checkpoint.npz digitcnn.pth
    scratchnet serve runs                              # the studio: http://127.0.0.1:8000/

Every failure prints one line ``scratchnet: error: ...`` to stderr and returns non-zero:
1 for bad data, files or numbers, 2 for bad usage, 130 when interrupted (143 on SIGTERM).
This module parses and prints; :mod:`scratchnet.run` does the work (the Python API).
"""
import argparse
import os
import re
import signal
import sys
import threading

import numpy as np

from . import __version__, backend, models, recipes, studio
from .data import DATASETS
from .callbacks import ProgressBar
from .run import CHECKPOINT, METRICS  # noqa: F401  (names the benchmarks use)
from .run import TRAIN_SETTINGS, Interrupted, NothingToTrain, Run, SettingsError
from .run import report
from .run.report import HEADS
from .run.settings import DATA_SETTINGS, DTYPES

EXIT_ERROR, EXIT_USAGE = 1, 2
RECIPE = " (default: the model's recipe)"
# a first step that takes longer than this is compiling kernels not in Numba's disk cache
COMPILE_NOTICE_AFTER_S = 3.0
ALLOW_PICKLE_HELP = ("two-digit models: read the tutorial's .pkl.gz images from --data-dir. "
                     "Unpickling runs whatever code the file names: allow it only for files "
                     "you trust")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise SettingsError(f"{message} (see `{self.prog} --help`)")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown; flags left out take the run layer's (:func:`_flag` shows those)."""


def _typed(name):
    """An argparse type: the number the run layer's check of setting ``name`` accepts."""
    check = TRAIN_SETTINGS[name][0]
    convert = int if "integer" in check.expected else float

    def parse(text):
        try:
            return check(name, convert(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {check.expected}, got {text!r}") from None
    parse.__name__ = check.expected  # argparse names the type in some messages
    return parse


def _flag(p, name, help, **kw):
    """--NAME for setting ``name``, typed as the run layer checks it; absent unless given."""
    check, default = TRAIN_SETTINGS.get(name, (None, None))
    if default is False or name == "no_progress":
        kw.update(action="store_true")
    elif hasattr(check, "expected"):
        kw.setdefault("type", _typed(name))
    if default not in (None, False):
        help += f" (default: {default})"
    kw.setdefault("default", argparse.SUPPRESS)
    p.add_argument("--" + name.replace("_", "-"), help=help, **kw)


def _add_data_flags(p, test_only=False):
    checkpoints = " (default: the checkpoint's, else generated from the shipped MNIST)"
    _flag(p, "data_dir", "folder with the IDX files (default: the copy shipped with scratchnet); "
          "two-digit models: a folder with train_multi_digit.npz and test_multi_digit.npz, or "
          "the tutorial's {train,test}_multi_digit.pkl.gz and {train,test}_labels.txt.gz (see "
          "--allow-pickle), else MNIST's IDX files to generate them from"
          + (checkpoints if test_only else ""))
    _flag(p, "dataset", "which dataset (default: the checkpoint's, else mnist)",
          choices=sorted(DATASETS))
    if not test_only:
        _flag(p, "limit_train", "use only the first N training images")
    _flag(p, "limit_test", "use only the first N test images")
    if not test_only:
        _flag(p, "n_train", "two-digit models: training images to generate (default: 40000)")
    _flag(p, "n_test", "two-digit models: test images to generate from MNIST's test digits "
          "(default: the checkpoint's, else 4000)")
    _flag(p, "data_seed", "two-digit models: seeds the generated images (default: the "
          "checkpoint's, else " + ("1, train's default --seed)" if test_only else "--seed)"))
    _flag(p, "allow_pickle", ALLOW_PICKLE_HELP)
    _flag(p, "download", "if MNIST's files are not in --data-dir, fetch them there from the "
          "usual mirrors (checksums verified)")
    _flag(p, "backend", "op implementation (default: $SCRATCHNET_BACKEND, else numba)",
          choices=backend.BACKENDS)


def _add_model_flag(p, help=None):
    _flag(p, "model", help or "the network a .pt/.pth holds (default: inferred from its keys "
          "and shapes)", choices=models.names())


def _command(sub, func, help, description, checkpoint=None, **kw):
    """The subcommand ``func`` runs (cmd_train: train), with its checkpoint argument if any."""
    p = sub.add_parser(func.__name__[4:], help=help, description=description,
                       formatter_class=_Formatter, **kw)
    p.set_defaults(func=func)
    if checkpoint:
        p.add_argument("checkpoint", help=checkpoint)
    return p


def build_parser():
    parser = _Parser(prog="scratchnet", description=__doc__.split("\n")[0],
                     formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"scratchnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    table = "\n".join(["recipes (flags override them):"]
                      + [f"  {n:10s} {r.describe()}" for n, r in recipes.RECIPES.items()])
    t = _command(sub, cmd_train, "train a model with its tutorial's recipe", "Train a model; "
                 "write checkpoint, metrics, plots and events.jsonl to --out.", epilog=table)
    _add_model_flag(t, "which network (required unless --resume)")
    _flag(t, "epochs", "passes over the training set" + RECIPE)
    _flag(t, "batch_size", "samples per step" + RECIPE)
    _flag(t, "lr", "learning rate" + RECIPE)
    _flag(t, "optimizer", "torch.optim's " + ", ".join(recipes.DISPLAY_NAMES.values()) + RECIPE,
          choices=recipes.OPTIMIZERS)
    _flag(t, "momentum", "SGD momentum" + RECIPE)
    _flag(t, "nesterov", "SGD Nesterov momentum" + RECIPE, action=argparse.BooleanOptionalAction)
    _flag(t, "weight_decay", "L2 penalty, decoupled for AdamW (default: the recipe's, else the "
          "optimizer's torch default)")
    _flag(t, "val_split", "fraction of the training images held out for validation" + RECIPE)
    _flag(t, "scheduler", "learning-rate schedule, stepped once per epoch: a class of "
          "torch.optim.lr_scheduler and its arguments, StepLR:step_size=1,gamma=0.7 (a list: "
          "MultiStepLR:milestones=[5;10]), or none"
          + RECIPE, metavar="SPEC")
    _flag(t, "seed", "seeds weights, dropout, shuffling and the validation split")
    _flag(t, "dtype", "floating-point type of weights and data", choices=DTYPES)
    _add_data_flags(t)
    _flag(t, "out", "run folder (default: runs/MODEL-TIMESTAMP, or the --resume folder)")
    _flag(t, "resume", "continue the run saved in DIR (or in this checkpoint file)",
          metavar="DIR")
    _flag(t, "dry_run", "one epoch of a few batches, end to end, to check the set-up")
    _flag(t, "no_progress", "no progress bars")

    weights = "checkpoint.npz, a run folder, or a .pt/.pth state dict"
    e = _command(sub, cmd_evaluate, "test accuracy, per class, and confusion matrix",
                 "Evaluate a checkpoint (.npz) or a PyTorch state dict (.pt/.pth) on the test "
                 "set.", weights)
    _add_model_flag(e)
    _add_data_flags(e, test_only=True)
    _flag(e, "batch_size", "test images per forward pass", default=1000)
    _flag(e, "normalize", "feed (pixels/255 - MEAN) / STD (default: the run's normalisation; "
          "for a .pt/.pth the model recipe's; pytorch/examples' mnist uses 0.1307 0.3081)",
          type=float, nargs=2, metavar=("MEAN", "STD"))

    p = _command(sub, cmd_predict, "probability of each class for image files",
                 "Classify image files (PNG, JPEG, any size or colour): each is turned into an "
                 "MNIST-like 28x28 digit first (for the two-digit models: a 42x28 canvas of two "
                 "stacked digits, and each digit gets its row).", weights)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG/JPEG/... image files")
    _add_model_flag(p)

    x = _command(sub, cmd_export, "save the weights as a PyTorch state dict",
                 "Write a checkpoint's weights as a torch state dict that the model's PyTorch "
                 "twin (reference.models) loads.", "checkpoint.npz or a run folder")
    x.add_argument("output", help="the .pt/.pth file to write")

    studio.add_parser(sub, formatter_class=_Formatter)
    return parser


def _kernels_cached():
    """Whether Numba's disk cache holds index files (``*.nbi``) of scratchnet's kernels."""
    import numba
    root = numba.config.CACHE_DIR or os.path.dirname(os.path.abspath(__file__))
    return any(name.endswith(".nbi") for _, _, names in os.walk(root) for name in names)


class _Printer:
    """The lines ``scratchnet train`` prints: what it trains, the first-compile notice when
    kernels must be compiled, and one line per epoch."""

    NOTICE = ("numba: compiling the kernels this model needs (up to about 10 s, once; cached "
              "on disk after that)")

    timer = None

    def on_train_start(self, run):
        print(f"training {run.describe()}", flush=True)
        if run.config["backend"] == "numba":
            if not _kernels_cached():
                print(self.NOTICE, flush=True)
            else:  # some may be missing (a new model or batch shape): say so if the step lags
                self.timer = threading.Timer(COMPILE_NOTICE_AFTER_S, print, (self.NOTICE,),
                                             {"flush": True})
                self.timer.daemon = True
                self.timer.start()

    def stop_timer(self, run, _):
        if self.timer is not None:
            self.timer.cancel()
    on_batch_end = on_train_end = stop_timer

    def on_epoch_end(self, run, record):
        print(report.epoch_text(record, run.config["epochs"]), flush=True)


def _settings(args, names):
    return {k: v for k, v in vars(args).items() if k in names}


def cmd_train(args):
    settings = _settings(args, TRAIN_SETTINGS)
    if "resume" in args:
        run = Run.resume(args.resume, **settings)
    else:
        run = Run.create(**settings)
    bar = [] if "no_progress" in args else [ProgressBar(leave=False)]
    try:
        run.train(callbacks=[_Printer(), *bar], no_progress=True)
    except NothingToTrain as e:
        print(f"scratchnet: {_cli_words(str(e))}", file=sys.stderr)
        return 0
    except Interrupted as e:
        print(f"scratchnet: interrupted at epoch {e.epoch}, batch {e.batch}; saved "
              f"{e.checkpoint} (continue with --resume {run.out})", file=sys.stderr, flush=True)
        return 128 + e.signal
    loss = f", {report.loss_text(run.test, 'test_')}" if "test_loss_first" in run.test else ""
    print(f"test {report.accuracy_text(run.test, 'test_')}{loss} on {run.test['test_samples']} "
          f"images; wrote {run.out}", flush=True)
    return 0


def cmd_evaluate(args):
    run = Run.load(args.checkpoint, getattr(args, "model", None))
    print(report.evaluation_text(run.evaluate(**_settings(
        args, ("batch_size", "normalize", "backend", *DATA_SETTINGS)))))
    return 0


def cmd_predict(args):
    run = Run.load(args.checkpoint, getattr(args, "model", None))
    results = run.predict_files(args.images)
    good = [(path, p) for path, p in results if isinstance(p, np.ndarray)]
    width = max(len(path) for path in args.images)
    classes = " ".join(f"{c:>6}" for c in range(10))
    if good:
        two = np.ndim(good[0][1]) == 2
        print(f"{'image':<{width}}  " + ("digit   " if two else "") + "pred  " + classes)
    for path, p in good:
        for head, probs in zip(HEADS, p) if np.ndim(p) == 2 else [(None, p)]:
            print(f"{path:<{width}}  " + (f"{head:<6}  " if head else "")
                  + f"{int(np.argmax(probs)):>4}  " + " ".join(f"{v:6.4f}" for v in probs))
    for _, error in results:
        if not isinstance(error, np.ndarray):
            print(f"scratchnet: error: {_one_line(error)}", file=sys.stderr)
    return 0 if len(good) == len(results) else EXIT_ERROR


def cmd_export(args):
    run = Run.load(args.checkpoint)
    run.export(args.output)
    name = run.config["model"]
    print(f"wrote {args.output}: {name} weights ({len(run.model.state_dict())} tensors) for "
          f"reference.models.build({name!r})")
    return 0


def _cli_words(message):
    """A library message in the command line's words: ``data_dir=DIR`` -> ``--data-dir DIR``,
    ``download=True`` -> ``--download``; asides meant for Python users dropped."""
    message = re.sub(r",? or --[\w-]+ on the command line", "", message)
    message = re.sub(r" \(--[\w-]+ on the command line\)", "", message)
    names = "|".join(sorted({*TRAIN_SETTINGS, "resume", "normalize"}, key=len, reverse=True))

    def flag(m):
        name, value = "--" + m.group(1).replace("_", "-"), m.group(2).strip("'\"")
        return name if value in ("", "True") else f"{name} {value}"
    return re.sub(rf"\b({names})=([^\s,;)]*)", flag, message)


def _one_line(error):
    return _cli_words(" ".join(str(error).split())) or type(error).__name__


def main(argv=None):
    """Run the command line ``argv`` (default: sys.argv[1:]); returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except SystemExit as e:  # --help, --version
        return e.code
    except BrokenPipeError:  # `scratchnet evaluate ... | head -1`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except SettingsError as e:  # bad usage: a command line or settings that cannot work
        print(f"scratchnet: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, TypeError, OSError, FloatingPointError) as e:
        # DataError, CheckpointError and ImageError are ValueErrors with file names in them
        print(f"scratchnet: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("scratchnet: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
