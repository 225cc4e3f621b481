"""The ``scratchnet`` command: train, evaluate, predict, export.

    scratchnet train --model digitcnn                  # the tutorial's recipe; flags override it
    scratchnet train --resume runs/digitcnn-...        # continue a run, bitwise as if never stopped
    scratchnet evaluate runs/digitcnn-.../checkpoint.npz   # or a PyTorch state dict (.pt/.pth)
    scratchnet predict runs/digitcnn-.../checkpoint.npz my_digit.png
    scratchnet export runs/digitcnn-.../checkpoint.npz digitcnn.pth
    scratchnet train --model multicnn                  # two overlapping digits, made from MNIST
    scratchnet predict runs/multicnn-.../checkpoint.npz two_digits.png

Every failure prints one line ``scratchnet: error: ...`` to stderr and returns non-zero:
1 for bad data, files or numbers, 2 for bad usage, 130 when interrupted.
"""
import argparse
import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time

import numpy as np

from . import backend, checkpoint, models, recipes, tasks, training
from . import random as sn_random
from .data import DATASETS, DataError, load_mnist, normalize, train_val_split
from .data import multidigit

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.json"
EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
# a --dry-run trains one epoch on this many batches and tests on this many
DRY_RUN_BATCHES = (4, 2)
RECIPE = " (default: the model's recipe)"
# settings a resumed run may change without changing its numbers
RESUME_MAY_CHANGE = {"resume", "epochs", "data_dir", "limit_test", "out", "no_progress",
                     "backend", "model", "allow_pickle", "n_test", "download"}
# flags only the two-digit models (multimlp, multicnn) take
TWO_DIGIT_FLAGS = ("n_train", "n_test", "data_seed", "allow_pickle")
TWO_DIGIT_DATASET = "two-digit"
HEADS = ("first", "second")
ALLOW_PICKLE_HELP = ("two-digit models: read the tutorial's .pkl.gz images from --data-dir. "
                     "Unpickling runs whatever code the file names: allow it only for files "
                     "you trust")


class UsageError(Exception):
    """A bad command line; reported like every other error, in one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults, except None ones: those flags default to the model's recipe."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


class _Given(argparse.Action):
    """Stores like "store" (or "store_true" with nargs=0) and records that the flag was given."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        namespace.given = namespace.given | {self.dest}


class _GivenBool(argparse.BooleanOptionalAction):
    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        namespace.given = namespace.given | {self.dest}


def _checked(convert, ok, expected):
    """An argparse type: ``convert`` the string, then require ``ok(value)``."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    parse.__name__ = expected  # argparse names the type in some messages
    return parse


positive_int = _checked(int, lambda v: v > 0, "a positive integer")
positive_float = _checked(float, lambda v: v > 0 and math.isfinite(v), "a positive number")
nonneg_float = _checked(float, lambda v: v >= 0 and math.isfinite(v), "a number >= 0")
fraction = _checked(float, lambda v: 0 <= v < 1, "a fraction in [0, 1)")
seed_int = _checked(int, lambda v: v >= 0, "a non-negative integer")


def _recipe_table():
    lines = ["recipes (flags override them):"]
    lines += [f"  {name:9s} {r.describe()}" for name, r in recipes.RECIPES.items()]
    return "\n".join(lines)


def _add_data_flags(p, test_only=False):
    p.add_argument("--data-dir", action=_Given, default=None,
                   help="folder with the IDX files (default: the copy shipped with scratchnet); "
                        "two-digit models: a folder with train_multi_digit.npz and "
                        "test_multi_digit.npz, or the tutorial's {train,test}_multi_digit.pkl.gz "
                        "and {train,test}_labels.txt.gz (see --allow-pickle), else MNIST's IDX "
                        "files to generate them from" + (
                            " (default: the checkpoint's, else generated from the shipped MNIST)"
                            if test_only else ""))
    p.add_argument("--dataset", action=_Given, default=None, choices=sorted(DATASETS),
                   help="which dataset (default: the checkpoint's, else mnist)")
    if not test_only:
        p.add_argument("--limit-train", action=_Given, type=positive_int, default=None,
                       help="use only the first N training images")
    p.add_argument("--limit-test", action=_Given, type=positive_int, default=None,
                   help="use only the first N test images")
    if not test_only:
        p.add_argument("--n-train", action=_Given, type=positive_int, default=None,
                       help="two-digit models: training images to generate from MNIST "
                            "(default: 40000, the tutorial's)")
    p.add_argument("--n-test", action=_Given, type=positive_int, default=None,
                   help="two-digit models: test images to generate from MNIST's test digits "
                        "(default: the checkpoint's, else 4000, the tutorial's)")
    p.add_argument("--data-seed", action=_Given, type=seed_int, default=None,
                   help="two-digit models: seeds the generated images (default: the "
                        "checkpoint's, else --seed)" if not test_only else
                        "two-digit models: seeds the generated test images (default: the "
                        "checkpoint's, else 1, train's default --seed)")
    p.add_argument("--allow-pickle", action=_Given, nargs=0, const=True, default=False,
                   help=ALLOW_PICKLE_HELP)
    p.add_argument("--download", action=_Given, nargs=0, const=True, default=False,
                   help="if MNIST's files are not in --data-dir, fetch them there from the usual "
                        "mirrors (checksums verified)")


def build_parser():
    parser = _Parser(prog="scratchnet", description=__doc__.split("\n")[0],
                     formatter_class=_Formatter)
    parser.set_defaults(given=frozenset())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    t = sub.add_parser("train", help="train a model with its tutorial's recipe",
                       formatter_class=_Formatter, epilog=_recipe_table(),
                       description="Train a model; write checkpoint, metrics and plots to --out.")
    t.add_argument("--model", action=_Given, choices=models.names(), default=None,
                   help="which network (required unless --resume)")
    t.add_argument("--epochs", action=_Given, type=positive_int, default=None,
                   help="passes over the training set" + RECIPE)
    t.add_argument("--batch-size", action=_Given, type=positive_int, default=None,
                   help="samples per step" + RECIPE)
    t.add_argument("--lr", action=_Given, type=positive_float, default=None,
                   help="learning rate" + RECIPE)
    t.add_argument("--optimizer", action=_Given, choices=recipes.OPTIMIZERS, default=None,
                   help="torch.optim's SGD, Adam or AdamW" + RECIPE)
    t.add_argument("--momentum", action=_Given, type=nonneg_float, default=None,
                   help="SGD momentum" + RECIPE)
    t.add_argument("--nesterov", action=_GivenBool, default=None,
                   help="SGD Nesterov momentum" + RECIPE)
    t.add_argument("--weight-decay", action=_Given, type=nonneg_float, default=None,
                   help="L2 penalty, decoupled for AdamW (default: the recipe's, else the "
                        "optimizer's torch default)")
    t.add_argument("--val-split", action=_Given, type=fraction, default=None,
                   help="fraction of the training images held out for validation" + RECIPE)
    t.add_argument("--seed", action=_Given, type=seed_int, default=1,
                   help="seeds weights, dropout, shuffling and the validation split")
    t.add_argument("--backend", action=_Given, choices=backend.BACKENDS, default=None,
                   help="op implementation (default: $SCRATCHNET_BACKEND, else numba)")
    t.add_argument("--dtype", action=_Given, choices=("float32", "float64"), default="float32",
                   help="floating-point type of weights and data")
    _add_data_flags(t)
    t.add_argument("--out", action=_Given, default=None,
                   help="run folder (default: runs/MODEL-TIMESTAMP, or the --resume folder)")
    t.add_argument("--resume", action=_Given, default=None, metavar="DIR",
                   help="continue the run saved in DIR (or in this checkpoint file)")
    t.add_argument("--dry-run", action=_Given, nargs=0, const=True, default=False,
                   help="one epoch of a few batches, end to end, to check the set-up")
    t.add_argument("--no-progress", action=_Given, nargs=0, const=True, default=False,
                   help="no progress bars")
    t.set_defaults(func=cmd_train, given=frozenset())

    e = sub.add_parser("evaluate", help="test accuracy, per class, and confusion matrix",
                       formatter_class=_Formatter,
                       description="Evaluate a checkpoint (.npz) or a PyTorch state dict "
                                   "(.pt/.pth) on the test set.")
    e.add_argument("checkpoint", help="checkpoint.npz, a run folder, or a .pt/.pth state dict")
    e.add_argument("--model", action=_Given, choices=models.names(), default=None,
                   help="the network a .pt/.pth holds (default: inferred from its keys and shapes)")
    _add_data_flags(e, test_only=True)
    e.add_argument("--batch-size", action=_Given, type=positive_int, default=1000,
                   help="test images per forward pass")
    e.add_argument("--backend", action=_Given, choices=backend.BACKENDS, default=None,
                   help="op implementation (default: $SCRATCHNET_BACKEND, else numba)")
    e.set_defaults(func=cmd_evaluate, given=frozenset())

    p = sub.add_parser("predict", help="probability of each class for image files",
                       formatter_class=_Formatter,
                       description="Classify image files (PNG, JPEG, any size or colour): each "
                                   "is turned into an MNIST-like 28x28 digit first (for the "
                                   "two-digit models: a 42x28 canvas of two stacked digits, "
                                   "and each digit gets its row).")
    p.add_argument("checkpoint", help="checkpoint.npz, a run folder, or a .pt/.pth state dict")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG/JPEG/... image files")
    p.add_argument("--model", action=_Given, choices=models.names(), default=None,
                   help="the network a .pt/.pth holds (default: inferred from its keys and shapes)")
    p.set_defaults(func=cmd_predict, given=frozenset())

    x = sub.add_parser("export", help="save the weights as a PyTorch state dict",
                       formatter_class=_Formatter,
                       description="Write a checkpoint's weights as a torch state dict that the "
                                   "model's PyTorch twin (reference.models) loads.")
    x.add_argument("checkpoint", help="checkpoint.npz or a run folder")
    x.add_argument("output", help="the .pt/.pth file to write")
    x.set_defaults(func=cmd_export, given=frozenset())
    return parser


# ----- shared helpers -----

def _checkpoint_path(path):
    """A run folder means its checkpoint.npz."""
    return os.path.join(path, CHECKPOINT) if os.path.isdir(path) else path


def _two_digit(name):
    """True for the models that name two digits (multimlp, multicnn)."""
    return models.OUTPUTS[name] == "two_logits"


def _reject_two_digit_flags(args, name):
    """UsageError when a two-digit-only flag was given for a single-digit model ``name``."""
    given = [d for d in TWO_DIGIT_FLAGS if d in args.given]
    if given and not _two_digit(name):
        raise UsageError(f"--{given[0].replace('_', '-')} applies to the two-digit models "
                         f"(multimlp, multicnn) only, not {name}")
    if "dataset" in args.given and _two_digit(name):
        raise UsageError(f"--dataset does not apply to {name}: its images are made from MNIST "
                         f"digits (or read from --data-dir)")


def _two_digit_files(config, split):
    """(kind, suffix, path) of the two-digit files in config's data_dir for ``split``, or None."""
    if config["data_dir"] is None:
        return None
    return multidigit.find_multidigit_files(config["data_dir"], split)


def _load_two_digit(split, config):
    """Two-digit (images (N, 42, 28), labels (N, 2)): read from files in data_dir when it holds
    them, else generated from MNIST (data_dir's IDX files, or the shipped copy)."""
    data_dir, found = config["data_dir"], _two_digit_files(config, split)
    if found is not None:
        kind, _, path = found
        if kind == "pkl" and not config.get("allow_pickle"):
            raise DataError(
                f"{path}: the tutorial's two-digit images are a Python pickle, and unpickling "
                f"runs whatever code the file names; pass --allow-pickle only if you trust the "
                f"file (or convert it once to .npz with scratchnet.data.save_multidigit_npz)")
        images, labels, _ = multidigit.load_multidigit_dir(data_dir, split, allow_pickle=True)
    else:
        path = f"the {split} set generated from MNIST"
        try:
            images, labels = multidigit.load_multidigit(
                split, seed=config["data_seed"], n_train=config["n_train"],
                n_test=config["n_test"], data_dir=data_dir)
        except DataError as e:
            if data_dir is None:
                raise
            image_name, label_name = multidigit.tutorial_files(split)
            raise DataError(
                f"{data_dir}: holds no two-digit {split} files ({multidigit.npz_file(split)}, "
                f"or the tutorial's {image_name} and {label_name}) and no MNIST files to "
                f"generate them from ({e})") from None
    if images.shape[1:] != multidigit.CANVAS_SHAPE:
        raise DataError(f"{path}: the two-digit models read 42 x 28 images, got "
                        f"{images.shape[1]} x {images.shape[2]}")
    return images, np.ascontiguousarray(labels.T)  # (N, 2): one row per sample, for batches


def _describe_data(config, split):
    """Where ``split`` comes from, for the messages: "mnist", "two-digit ... from FILE"."""
    if config["dataset"] != TWO_DIGIT_DATASET:
        return config["dataset"]
    found = _two_digit_files(config, split)
    if found is not None:
        return f"two-digit (from {found[2]})"
    return f"two-digit (generated from MNIST, data seed {config['data_seed']})"


def _load_data(split, config, limit):
    if config["dataset"] == TWO_DIGIT_DATASET:
        images, labels = _load_two_digit(split, config)
    else:
        images, labels = load_mnist(split, data_dir=config["data_dir"],
                                    dataset=config["dataset"],
                                    download=config.get("download", False))
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels


def _inputs(images, model, normalization, dtype):
    mean, std = normalization if normalization else (None, None)
    return normalize(images, mean, std, dtype=dtype, input_shape=model.input_shape)


def _load_run_checkpoint(path, *keys):
    """A checkpoint written by ``scratchnet train``: its meta must hold ``keys``."""
    ckpt = checkpoint.load_checkpoint(path)
    missing = [k for k in ("model", "config", *keys) if k not in ckpt.meta]
    if missing:
        raise checkpoint.CheckpointError(
            f"{path}: not a checkpoint of `scratchnet train` (no {', '.join(missing)} in it)")
    return ckpt


def _load_for_inference(path, model_name=None):
    """(model, name, normalization, dataset, config) from a checkpoint or a torch state dict;
    config is the training run's (None for a state dict)."""
    config = None
    if checkpoint.is_torch_file(path):
        state = checkpoint.load_torch_state_dict(path)
        name = model_name or checkpoint.infer_model(state)
        dtype = np.result_type(*state.values()) if state else np.float32
        normalization = recipes.resolve(name).normalize
        dataset = TWO_DIGIT_DATASET if _two_digit(name) else "mnist"
    else:
        path = _checkpoint_path(path)
        ckpt = _load_run_checkpoint(path)
        state, name = ckpt.model_state, ckpt.meta["model"]
        if model_name is not None and model_name != name:
            raise checkpoint.CheckpointError(f"{path} holds a {name} model, not {model_name}")
        config = ckpt.meta["config"]
        dtype, normalization, dataset = config["dtype"], config["normalize"], config["dataset"]
    model = models.build(name, dtype=dtype)
    checkpoint.load_weights(model, state, path, name)
    return model.eval(), name, normalization, dataset, config


@contextlib.contextmanager
def _stop_on_ctrl_c():
    """Yields ``should_stop()``: the first Ctrl-C makes it True (training stops at the next
    batch boundary and saves); a second one interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    stop = []

    def handler(signum, frame):
        stop.append(signum)
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(stop)
    finally:
        signal.signal(signal.SIGINT, previous)


def _percent(v):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}%"


# ----- train -----

def _new_config(args):
    if args.model is None:
        raise UsageError("train needs --model NAME (or --resume DIR)")
    _reject_two_digit_flags(args, args.model)
    recipe = recipes.resolve(
        args.model, optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size,
        epochs=args.epochs, momentum=args.momentum, nesterov=args.nesterov,
        weight_decay=args.weight_decay, val_split=args.val_split)
    config = {"model": args.model, **dataclasses.asdict(recipe), "seed": args.seed,
              "backend": args.backend or backend.get_backend(), "dtype": args.dtype,
              "dataset": args.dataset or "mnist", "data_dir": args.data_dir,
              "limit_train": args.limit_train, "limit_test": args.limit_test,
              "dry_run": args.dry_run, "download": args.download}
    config["normalize"] = list(recipe.normalize) if recipe.normalize else None
    if _two_digit(args.model):
        config.update(dataset=TWO_DIGIT_DATASET, n_train=args.n_train or 40000,
                      n_test=args.n_test or 4000,
                      data_seed=args.seed if args.data_seed is None else args.data_seed,
                      allow_pickle=args.allow_pickle)
    if args.dry_run:
        train_batches, test_batches = DRY_RUN_BATCHES
        config["epochs"] = 1
        config["limit_train"] = min(args.limit_train or math.inf,
                                    math.ceil(train_batches * recipe.batch_size
                                              / (1 - recipe.val_split)))
        config["limit_test"] = min(args.limit_test or math.inf, test_batches * recipe.batch_size)
    return config


def _resumed_config(args, meta, path):
    config = dict(meta["config"])
    if args.model is not None and args.model != config["model"]:
        raise checkpoint.CheckpointError(f"{path} holds a {config['model']} model, "
                                         f"not {args.model}")
    _reject_two_digit_flags(args, config["model"])
    for dest in sorted(args.given - RESUME_MAY_CHANGE):
        value = getattr(args, dest)
        if value != config.get(dest):
            flag = "--" + dest.replace("_", "-")
            raise UsageError(
                f"{flag} {value} differs from the resumed run's {config.get(dest)}; a resumed "
                f"run keeps its settings (it may change only --epochs, --data-dir, "
                f"--limit-test, --n-test, --allow-pickle, --backend, --out, --no-progress)")
    for dest in ("epochs", "data_dir", "limit_test", "backend", "n_test"):
        if dest in args.given:
            config[dest] = getattr(args, dest)
    config["download"] = args.download  # like --allow-pickle, each command gives it anew
    if config["dataset"] == TWO_DIGIT_DATASET:
        config["allow_pickle"] = args.allow_pickle  # a permission each command gives anew
    return config


def _restore(path, resumed, optimizer):
    """Optimizer state, dropout generator and TrainState from a checkpoint being resumed."""
    try:
        optimizer.load_state_dict(resumed.optimizer_state)
        sn_random.set_rng_state(resumed.meta["rng_state"])
        return training.TrainState.from_dict(resumed.meta["progress"])
    except (KeyError, ValueError, TypeError) as e:
        raise checkpoint.CheckpointError(
            f"{path}: cannot resume from it: its optimizer, RNG or progress state is damaged "
            f"({type(e).__name__}: {e})") from None


def _default_out(model):
    base = os.path.join("runs", f"{model}-{time.strftime('%Y%m%d-%H%M%S')}")
    out, n = base, 1
    while os.path.exists(out):
        n += 1
        out = f"{base}-{n}"
    return out


def _finite(value):
    """``value`` with every NaN/inf float replaced by None, so metrics.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _save_run(out, model, optimizer, config, state, test=None):
    """Write checkpoint.npz and metrics.json (epochs so far, and the test report when done)."""
    os.makedirs(out, exist_ok=True)
    meta = {"model": config["model"], "config": config, "progress": state.to_dict(),
            "rng_state": sn_random.get_rng_state(), "finished": test is not None}
    checkpoint.save_checkpoint(os.path.join(out, CHECKPOINT), meta, model.state_dict(),
                               optimizer.state_dict())
    metrics = {"model": config["model"], "config": config, "epochs": state.history, **(test or {})}
    text = json.dumps(_finite(metrics), indent=2)
    checkpoint.atomic_write(os.path.join(out, METRICS), lambda f: f.write(text.encode()))


def _accuracies(metrics, prefix):
    """"accuracy 91.00%", and for two digits " (first 93.00%, second 95.00%, both 88.50%)"."""
    text = f"accuracy {_percent(metrics[f'{prefix}accuracy'])}"
    if f"{prefix}accuracy_both" in metrics:
        text += (f" (first {_percent(metrics[f'{prefix}accuracy_first'])}, second "
                 f"{_percent(metrics[f'{prefix}accuracy_second'])}, both "
                 f"{_percent(metrics[f'{prefix}accuracy_both'])})")
    return text


def _loss(metrics, prefix):
    """"loss 0.1234", and for two digits " (first 0.1000, second 0.1468)"."""
    text = f"loss {metrics[f'{prefix}loss']:.4f}"
    if f"{prefix}loss_first" in metrics:
        text += (f" (first {metrics[f'{prefix}loss_first']:.4f}, second "
                 f"{metrics[f'{prefix}loss_second']:.4f})")
    return text


def _print_epoch(record, epochs):
    line = (f"epoch {record['epoch']}/{epochs}: train {_loss(record, 'train_')} "
            f"{_accuracies(record, 'train_')}")
    if record["val_loss"] is not None:
        line += f" | val {_loss(record, 'val_')} {_accuracies(record, 'val_')}"
    line += f" | {record['samples_per_s']:.0f} samples/s, {record['seconds']:.1f} s"
    print(line, flush=True)


def _confusion(labels, predictions):
    """The confusion matrix, or for two digits the list (first digit's, second digit's)."""
    if labels.ndim == 1:
        return training.confusion_matrix(labels, predictions)
    return [training.confusion_matrix(labels[:, h], predictions[:, h]) for h in range(2)]


def _test_report(model, task, x, labels):
    """Final test metrics as a dict for metrics.json, the predictions and confusion matrix
    (for two digits: both digits' matrices summed, and each digit's, ``_first``/``_second``)."""
    result = training.evaluate(model, task, x, labels, batch_size=1000)
    matrices = _confusion(labels, result["predictions"])
    report = {"test_samples": int(len(labels)), "test_loss": result["loss"],
              "test_accuracy": result["accuracy"]}
    report.update({f"test_{k}": v for k, v in result.items()
                   if k not in ("loss", "accuracy", "predictions")})
    matrix = matrices if labels.ndim == 1 else sum(matrices)
    report["per_class_accuracy"] = training.per_class_accuracy(matrix).tolist()
    report["confusion_matrix"] = matrix.tolist()
    if labels.ndim == 2:
        for head, m in zip(HEADS, matrices):
            report[f"per_class_accuracy_{head}"] = training.per_class_accuracy(m).tolist()
            report[f"confusion_matrix_{head}"] = m.tolist()
    return report, result["predictions"], matrices


def _write_plots(out, history, images, labels, predictions, matrices, dataset):
    from . import plots  # matplotlib is slow to import; only training needs it
    classes = None if dataset in ("mnist", TWO_DIGIT_DATASET) else DATASETS[dataset]["classes"]
    if history:
        plots.training_curves(history, os.path.join(out, "curves.png"))
    plots.prediction_grid(images, predictions, labels, os.path.join(out, "predictions.png"),
                          classes=classes)
    titles = None if labels.ndim == 1 else [f"{head} digit" for head in HEADS]
    plots.confusion_matrix_figure(matrices, os.path.join(out, "confusion_matrix.png"),
                                  classes=classes, titles=titles)


def _start_or_resume(args):
    """(config, run folder, checkpoint being resumed or None, its path or None)."""
    if args.resume is None:
        config = _new_config(args)
        out = args.out or _default_out(config["model"])
        if os.path.exists(os.path.join(out, CHECKPOINT)):
            raise UsageError(f"{out} already holds a run; continue it with --resume {out} "
                             f"or choose another --out")
        return config, out, None, None
    path = _checkpoint_path(args.resume)
    resumed = _load_run_checkpoint(path, "progress", "rng_state")
    config = _resumed_config(args, resumed.meta, path)
    return config, args.out or os.path.dirname(os.path.abspath(path)), resumed, path


def _train_and_val(config, model, recipe):
    """(x, y) for training and for validation (None without a split), model-ready."""
    images, labels = _load_data("train", config, config["limit_train"])
    # its own stream from the seed, apart from the weights/dropout and shuffling ones
    train_idx, val_idx = train_val_split(len(labels), config["val_split"],
                                         rng=np.random.default_rng([config["seed"], 2]))
    dtype = model.dtype
    train = (_inputs(images[train_idx], model, recipe.normalize, dtype), labels[train_idx])
    if not len(val_idx):
        return train, None
    return train, (_inputs(images[val_idx], model, recipe.normalize, dtype), labels[val_idx])


def cmd_train(args):
    config, out, resumed, path = _start_or_resume(args)
    recipe = recipes.Recipe(**{f: config[f] for f in recipes.Recipe.__dataclass_fields__})
    test_images, test_labels = _load_data("test", config, config["limit_test"])
    shuffle_rng = np.random.default_rng([config["seed"], 1])

    with backend.use_backend(config["backend"]), \
            np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        sn_random.manual_seed(config["seed"])
        model = models.build(config["model"], dtype=config["dtype"])
        task = tasks.for_model(models.OUTPUTS[config["model"]])
        optimizer = recipes.make_optimizer(recipe, model.parameters())
        if resumed is None:
            state = training.TrainState(shuffle_state=shuffle_rng.bit_generator.state)
        else:
            checkpoint.load_weights(model, resumed.model_state, path, config["model"])
            state = _restore(path, resumed, optimizer)
        train, val = _train_and_val(config, model, recipe)
        print(f"training {config['model']} on {len(train[1])} "
              f"{_describe_data(config, 'train')} images "
              f"({recipe.describe()}), {config['backend']} backend, {config['dtype']}; "
              f"run folder {out}", flush=True)
        if config["backend"] == "numba":
            # the first step compiles every kernel it touches (6-11 s for a conv model on the
            # 2-core machines measured, empty cache); without a word it looks like a hang
            print("numba: the first step compiles the kernels it needs (up to about 10 s the "
                  "first time; cached on disk after that)", flush=True)

        def on_epoch(record):
            _print_epoch(record, config["epochs"])
            _save_run(out, model, optimizer, config, state)

        with _stop_on_ctrl_c() as should_stop:
            try:
                training.fit(model, task, optimizer, train, val, config["epochs"],
                             recipe.batch_size, shuffle_rng, state,
                             progress=not args.no_progress, should_stop=should_stop,
                             on_epoch=on_epoch)
            except training.NonFiniteLoss as e:
                saved = (f"the run folder keeps the checkpoint of epoch {state.epoch}"
                         if state.epoch else "nothing was saved")
                raise training.NonFiniteLoss(f"{e}; {saved}") from None
            except training.TrainingInterrupted:
                _save_run(out, model, optimizer, config, state)
                print(f"scratchnet: interrupted at epoch {state.epoch + 1}, batch {state.batch}; "
                      f"saved {os.path.join(out, CHECKPOINT)} (continue with --resume {out})",
                      file=sys.stderr, flush=True)
                return EXIT_INTERRUPTED

        x_test = _inputs(test_images, model, recipe.normalize, model.dtype)
        report, predictions, matrices = _test_report(model, task, x_test, test_labels)
    _save_run(out, model, optimizer, config, state, test=report)
    _write_plots(out, state.history, test_images, test_labels, predictions, matrices,
                 config["dataset"])
    loss = f", {_loss(report, 'test_')}" if "test_loss_first" in report else ""
    print(f"test {_accuracies(report, 'test_')}{loss} on {report['test_samples']} "
          f"images; wrote {out}", flush=True)
    return 0


# ----- evaluate / predict / export -----

def _format_matrix(matrix):
    width = max(4, len(str(matrix.max())) + 1)
    header = "true\\pred" + "".join(f"{c:>{width}}" for c in range(len(matrix)))
    rows = [f"{r:>9}" + "".join(f"{v:>{width}}" for v in row) for r, row in enumerate(matrix)]
    return "\n".join([header] + rows)


def _evaluation_data_config(args, name, dataset, config):
    """What ``_load_data`` needs to load the test set ``evaluate`` scores."""
    _reject_two_digit_flags(args, name)
    if dataset != TWO_DIGIT_DATASET:
        return {"data_dir": args.data_dir, "dataset": args.dataset or dataset,
                "download": args.download}
    # the checkpoint's own test set (its files, or generated as it was), unless flags say else
    config = config or {}
    return {"dataset": TWO_DIGIT_DATASET,
            "data_dir": args.data_dir if "data_dir" in args.given else config.get("data_dir"),
            "data_seed": args.data_seed if args.data_seed is not None
            else config.get("data_seed", 1),
            "n_train": config.get("n_train", 40000),
            "n_test": args.n_test or config.get("n_test", 4000),
            "allow_pickle": args.allow_pickle}


def _print_per_class_and_confusion(matrix, what=""):
    per_class = training.per_class_accuracy(matrix)
    print(f"per-class accuracy{what}: " + "  ".join(f"{c}: {_percent(a)}" for c, a in
                                                   enumerate(per_class.tolist())))
    print(f"confusion matrix{what} (rows: true class, columns: predicted class):")
    print(_format_matrix(matrix))


def cmd_evaluate(args):
    with backend.use_backend(args.backend or backend.get_backend()):
        model, name, normalization, dataset, config = _load_for_inference(args.checkpoint,
                                                                          args.model)
        data_config = _evaluation_data_config(args, name, dataset, config)
        images, labels = _load_data("test", data_config, args.limit_test)
        x = _inputs(images, model, normalization, model.dtype)
        result = training.evaluate(model, tasks.for_model(models.OUTPUTS[name]), x, labels,
                                   batch_size=args.batch_size)
    matrices = _confusion(labels, result["predictions"])
    if labels.ndim == 1:
        print(f"{name} on {len(labels)} {data_config['dataset']} test images: accuracy "
              f"{_percent(result['accuracy'])}, loss {result['loss']:.4f}")
        _print_per_class_and_confusion(matrices)
        return 0
    print(f"{name} on {len(labels)} {_describe_data(data_config, 'test')} test images: "
          f"{_accuracies(result, '')}, {_loss(result, '')}")
    for head, matrix in zip(HEADS, matrices):
        _print_per_class_and_confusion(matrix, f", {head} digit")
    return 0


def cmd_predict(args):
    from .preprocess import load_digit, load_two_digit  # PIL is needed only here
    model, name, normalization, _, _ = _load_for_inference(args.checkpoint, args.model)
    load = load_two_digit if _two_digit(name) else load_digit
    digits = np.stack([load(path) for path in args.images])
    x = _inputs(digits, model, normalization, model.dtype)
    probs = tasks.for_model(models.OUTPUTS[name]).probabilities(model(x))
    width = max(len(p) for p in args.images)
    classes = " ".join(f"{c:>6}" for c in range(probs.shape[-1]))
    if probs.ndim == 2:
        print(f"{'image':<{width}}  pred  " + classes)
        for path, p in zip(args.images, probs):
            print(f"{path:<{width}}  {int(np.argmax(p)):>4}  " + " ".join(f"{v:6.4f}" for v in p))
        return 0
    # two digits: a row per digit, top (first) then bottom (second)
    print(f"{'image':<{width}}  digit   pred  " + classes)
    for path, pair in zip(args.images, probs):
        for head, p in zip(HEADS, pair):
            print(f"{path:<{width}}  {head:<6}  {int(np.argmax(p)):>4}  "
                  + " ".join(f"{v:6.4f}" for v in p))
    return 0


def cmd_export(args):
    ckpt = _load_run_checkpoint(_checkpoint_path(args.checkpoint))
    checkpoint.save_torch_state_dict(args.output, ckpt.model_state)
    print(f"wrote {args.output}: {ckpt.meta['model']} weights ({len(ckpt.model_state)} tensors) "
          f"for reference.models.build({ckpt.meta['model']!r})")
    return 0


def _one_line(error):
    return " ".join(str(error).split()) or type(error).__name__


def main(argv=None):
    """Run the command line ``argv`` (default: sys.argv[1:]); returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except SystemExit as e:  # --help
        return e.code
    except UsageError as e:
        print(f"scratchnet: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, TypeError, OSError, FloatingPointError) as e:
        # DataError, CheckpointError and ImageError are ValueErrors with file names in them
        print(f"scratchnet: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("scratchnet: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
